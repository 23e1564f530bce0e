"""A job is one call's stream of items (a map, an apply, a submit) as the manager sees it.

The job cuts its input into chunks on demand (sizes from :class:`ChunkSizer`), takes back the
answers, applies the error policy and retries, and hands results to a *sink* in the right order.
Only the manager thread calls a job's methods; sinks are where the caller's thread meets it.
"""

from __future__ import annotations

import abc
import collections
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from allcores import errors as _errors
from allcores._engine import serialization, shm
from allcores._engine.messages import TaskError
from allcores._engine.options import OnError, TaskOptions
from allcores._engine.recording import CallRecord, Recorder
from allcores._engine.scheduler import MAX_REORDER_ITEMS, ChunkSizer, Reorderer

__all__ = ["Failure", "MapResults", "OnError"]


@dataclass(frozen=True)
class Failure:
    """An item that did not produce a value.

    Attributes:
        index: the item's position in the input.
        item_repr: a short repr of the item.
        error: the exception, with the worker's traceback as ``__cause__``.
    """

    index: int
    item_repr: str
    error: BaseException


class MapResults(list):
    """The list a map returns, plus ``failures``: every item that failed, with its error.

    Under ``on_error="raise"`` (the default) a failure raises instead, so ``failures`` is empty;
    under ``"collect"`` the exception stands in the list at the item's place; under ``"skip"`` the
    item is left out of the list and is found only in ``failures``.
    """

    failures: list[Failure]

    def __init__(self, values: Iterable[Any] = (), failures: list[Failure] | None = None):
        super().__init__(values)
        self.failures = failures if failures is not None else []
        self._record: CallRecord | None = None
        self._stats: Any = None

    @property
    def stats(self) -> Any:
        """The call's :class:`allcores.RunStats` (None for a list not made by a map).

        Built on first access from the per-chunk records the pool kept, so calls that never
        look at it pay nothing for it.

        >>> import allcores
        >>> r = allcores.map(abs, range(100), workers=2)
        >>> r.stats.items
        100
        """
        if self._stats is None and self._record is not None:
            from allcores._stats import call_stats

            self._stats = call_stats(self._record)
        return self._stats


@dataclass(eq=False)
class Chunk:
    """Consecutive items ``[start, start + len(items))`` of one job, sent as one message."""

    job: Job
    start: int
    items: Sequence  # a list, or a range for range inputs
    attempt: int = 1  # how many times these items have been sent
    # Runs alone, never in a batch with other jobs: it is re-run to find which item killed a
    # worker (a batch's death isolates each of its jobs), or it is a retry.
    isolated: bool = False
    payload: bytes | None = None  # the packed items, made when the chunk is sent
    segments: list[str] = field(default_factory=list)  # shared memory the payload refers to
    deadline: float | None = None  # monotonic time by which it must finish (timeout=)
    pack_seconds: float = 0.0  # the manager's time pickling the items (run statistics)
    claim: int = 0  # while in a worker's pipe: its claim id if it may be taken back, else 0


class Sink(abc.ABC):
    """Where a job's results go; the facades subclass it. Called from the manager thread."""

    bounded = False  # True when results wait for a consumer (imap): reading input is limited
    record: CallRecord | None = None  # the call's run statistics, set by its Job

    @abc.abstractmethod
    def deliver(self, values: list) -> None:
        """Results of consecutive items, in the order the caller asked for."""

    @abc.abstractmethod
    def finish(self, failures: list[Failure]) -> None:
        """Every item is done; ``failures`` lists those that failed (collect/skip)."""

    @abc.abstractmethod
    def fail(self, error: BaseException) -> None:
        """The job failed as a whole (fail-fast, cancelled, pool terminated)."""

    def unconsumed(self) -> int:
        """Delivered batches the caller has not taken yet (for back-pressure)."""
        return 0


class Latch:
    """A flag set once, that threads can wait on: ``threading.Event``'s ``set``, ``is_set`` and
    ``wait``, built on one lock held until the flag is set.

    ``apply_async`` in a loop makes one per call: an Event (a Condition around a lock, a waiter
    list) costs ~3.5 us to make and a lock and a notify to set, a Latch ~0.1 us and one release.
    """

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds pass; the flag."""
        if self._set:
            return True
        if timeout is None:
            acquired = self._lock.acquire()
        else:
            acquired = self._lock.acquire(timeout=max(0.0, timeout))
        if acquired:
            self._lock.release()  # the next waiter gets through too
        return self._set


class ListSink(Sink):
    """Collects a whole map (or one apply) for a blocking or async ``get``."""

    def __init__(
        self,
        single: bool = False,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.values = MapResults()
        self.single = single
        self.error: BaseException | None = None
        self.done = Latch()
        self.callback = callback
        self.error_callback = error_callback

    def deliver(self, values: list) -> None:
        self.values.extend(values)

    def finish(self, failures: list[Failure]) -> None:
        self.values.failures = failures
        self.values._record = self.record
        if self.callback is not None:
            try:
                self.callback(self.value())
            except BaseException as exc:  # a broken callback must not stop the engine
                _report_callback_error(exc)
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        if self.error_callback is not None:
            try:
                self.error_callback(error)
            except BaseException as exc:
                _report_callback_error(exc)
        self.done.set()

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        if self.single:
            return self.values[0]
        return self.values


def _report_callback_error(exc: BaseException) -> None:
    import sys
    import traceback

    print("allcores: exception in a result callback:", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


_END = object()


class IterSink(Sink):
    """Feeds an iterator in the caller's thread, batch by batch, as results arrive."""

    bounded = True

    def __init__(self) -> None:
        self._batches: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self.failures: list[Failure] = []
        self.on_consume: Callable[[], None] | None = None  # wakes the manager (back-pressure)

    def deliver(self, values: list) -> None:
        if values:
            with self._cond:
                self._batches.append(values)
                self._cond.notify()

    def finish(self, failures: list[Failure]) -> None:
        self.failures = failures
        with self._cond:
            self._batches.append(_END)
            self._cond.notify()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._batches.append(error)
            self._batches.append(_END)  # after the error, the iterator ends (as in the stdlib)
            self._cond.notify()

    def unconsumed(self) -> int:
        return len(self._batches)

    def next_batch(self, timeout: float | None = None) -> list | None:
        """The next batch of values; None at the end. Raises the job's error, or TimeoutError."""
        with self._cond:
            if not self._batches and not self._cond.wait_for(
                lambda: bool(self._batches), timeout
            ):
                raise TimeoutError
            batch = self._batches[0]
            if batch is _END:
                return None
            self._batches.popleft()
        if self.on_consume is not None:
            self.on_consume()
        if isinstance(batch, BaseException):
            raise batch
        return batch


class Raised:
    """An item's exception delivered in its place, for the caller to raise when it gets there
    (``Pool.imap`` with chunksize 1: the standard pool raises each failed item's exception at
    its position and the iteration goes on)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Job:
    """One call's items on their way through the pool, and their bookkeeping.

    The job counts its chunks out and back (:meth:`sent`, :meth:`returned`), holds its retries
    until they are due (:meth:`release_due`), and settles itself exactly once: ``finish`` or
    ``fail`` on its sink. Only the manager thread calls its methods.
    """

    _ids = itertools.count()

    def __init__(
        self,
        fn_id: int,
        fn_blob: bytes,
        iterable: Iterable[Any],
        sink: Sink,
        *,
        workers: int,
        mode: int = 0,
        ordered: bool = True,
        options: TaskOptions | None = None,
        max_outstanding: int | None = None,
        on_dispatch: Callable[[], bool] | None = None,
        fn_cached: bool = False,
        function: str = "",
        errors_in_place: bool = False,
    ) -> None:
        options = options or TaskOptions()  # validated when it was made
        self.id = next(Job._ids)
        self.fn_id = fn_id
        self.fn_blob = fn_blob
        self.fn_cached = fn_cached  # the pool reuses fn_id for later calls of the same function
        self.sink = sink
        self.mode = mode
        self.on_error: OnError = options.on_error
        self.policy = options.policy()
        self.item_timeout = options.item_timeout  # seconds one item may run, or None
        self.max_held_bytes = options.max_held_bytes
        self.on_dispatch = on_dispatch
        self.record = CallRecord(self.id, function, workers)  # the call's run statistics
        sink.record = self.record
        self.recorder: Recorder | None = None  # the pool's, set by the manager on submit
        # With on_error="raise", deliver each failure as a Raised in its place instead of
        # failing the whole job (Pool.imap with chunksize 1, as the standard pool behaves).
        self.errors_in_place = errors_in_place and self.on_error == "raise"
        self.chunksize = options.chunksize
        # The exception the caller's input iterator raised: delivered after the items read
        # before it, then the job ends (multiprocessing.Pool.imap does the same).
        self.input_error: BaseException | None = None
        # A timed item must start as soon as it is sent, so the clock is right: one item a chunk.
        self.sizer = ChunkSizer(workers, 1 if self.item_timeout is not None else options.chunksize)
        self.reorder = Reorderer(ordered)
        self.max_outstanding = max_outstanding or 4 * max(1, workers)
        self.pending: collections.deque[Chunk] = collections.deque()
        self.delayed: list[tuple[float, Chunk]] = []  # retries waiting out their backoff
        # The manager's set of jobs with retries waiting, so its timers look at those alone.
        self.retrying: set[Job] | None = None
        self.in_flight = 0  # chunks
        self.in_flight_items = 0
        self._result_bytes = 0  # bytes of answers received, and the items they answered for:
        self._result_items = 0  # the size of a result, for the memory bound of ordered imap
        self.failures: list[Failure] = []
        self.finished = False
        self._seq: Sequence | None = None
        self._iter: Iterator | None = None
        self.total: int | None = None
        if isinstance(iterable, (list, tuple, range)):
            self._seq = iterable
            self.total = len(iterable)
        else:
            self._iter = iter(iterable)
            try:
                self.total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                self.total = None
        self.next_index = 0
        self.exhausted = self.total == 0
        self.progress: Any = None
        if options.progress:
            from allcores._progress import make_progress

            self.progress = make_progress(options.progress, self.total)

    # -- feeding -------------------------------------------------------------------------

    def can_feed(self) -> bool:
        if self.finished:
            return False
        if self.pending:
            return True
        if self.exhausted:
            return False
        if self.in_flight + self.sink.unconsumed() >= self.max_outstanding:
            return False
        # Results held back behind a slow item wait in memory; a list (map) keeps them anyway,
        # an iterator (imap) bounds them, by count and by bytes, so memory stays flat.
        if not self.sink.bounded:
            return True
        if self.reorder.buffered_items >= MAX_REORDER_ITEMS:
            return False
        room = self._room_for_items()
        return room is None or room >= 1

    def _bytes_per_item(self) -> float | None:
        return self._result_bytes / self._result_items if self._result_items else None

    def _room_for_items(self) -> int | None:
        """How many more items an ordered iterator may read while results are held back behind
        a slow item: those held and those in flight stay within ``max_held_bytes``. None: no
        bound applies (nothing held back, unordered, or no result seen yet)."""
        if not self.reorder.ordered or not self.reorder.buffered_items:
            return None
        per_item = self._bytes_per_item()
        if not per_item:
            return None
        held = (self.reorder.buffered_items + self.in_flight_items) * per_item
        return int((self.max_held_bytes - held) // per_item)

    def _max_chunk_items(self) -> int | None:
        """Items whose results fit one chunk's share of ``max_held_bytes`` (bounded sinks)."""
        per_item = self._bytes_per_item()
        if not self.sink.bounded or not per_item:
            return None
        share = self.max_held_bytes / max(1, self.max_outstanding)
        room = self._room_for_items()
        items = int(share // per_item)
        if room is not None:
            items = min(items, room)
        return max(1, items)

    def note_answer_bytes(self, nbytes: int, items: int) -> None:
        """An answer of ``nbytes`` (pickled, shared memory included) came for ``items`` items."""
        self._result_bytes += nbytes
        self._result_items += items

    def next_chunk(self, budget: float | None = None) -> Chunk | None:
        """The next chunk to send, or None when there is nothing to send now.

        ``budget`` caps the chunk's expected seconds (see ``ChunkSizer.next_size``)."""
        if self.pending:
            return self.pending.popleft()
        if self.exhausted or self.finished:
            return None
        if self.on_dispatch is not None and not self.on_dispatch():
            # A future cancelled before it started: it counts as done, nothing runs.
            self.exhausted = True
            return None
        remaining = None if self.total is None else self.total - self.next_index
        size = self.sizer.next_size(remaining, budget) if remaining is None or remaining > 0 else 1
        cap = self._max_chunk_items()
        if cap is not None:
            size = min(size, cap)
        start = self.next_index
        items: Sequence[Any]
        if isinstance(self._seq, range):
            items = self._seq[start : start + size]  # a range pickles in a few bytes
        elif self._seq is not None:
            items = list(self._seq[start : start + size])
        else:
            assert self._iter is not None
            read: list = []
            try:
                read.extend(itertools.islice(self._iter, size))
            except BaseException as exc:
                # The caller's iterator raised: the items read before it still run, then the
                # caller gets the exception. With an explicit chunksize the standard pool loses
                # the partial chunk (it reads a chunk as a whole); so do we, to stay a drop-in.
                self.exhausted = True
                self.input_error = exc
                if self.chunksize is not None:
                    read = []
            items = read
        self.next_index += len(items)
        if len(items) < size or (self.total is not None and self.next_index >= self.total):
            self.exhausted = True
        if not items:
            return None
        return Chunk(self, start, items)

    # -- answers -------------------------------------------------------------------------

    def complete(
        self,
        chunk: Chunk,
        values: list,
        errors: Iterable[TaskError],
        worker_label: str,
        now: float,
    ) -> None:
        """A worker answered for ``chunk``: deliver values, handle each failed item."""
        if self.finished:
            return
        errors = list(errors)
        if len(values) < len(chunk.items) and not errors:
            # Defensive: a short answer without errors would silently lose items.
            raise _errors.InternalError(
                f"a chunk of {len(chunk.items)} items came back with {len(values)} values "
                "and no error"
            )
        if not errors:
            self._deliver(chunk.start, len(chunk.items), values)
            return
        # Deliver around the failed items; each failure is retried, collected, skipped or raised.
        position = 0
        for err in errors:
            if err.offset > position:
                self._deliver(chunk.start + position, err.offset - position,
                              values[position : err.offset])
            item = chunk.items[err.offset]
            error = attach_traceback(err.error, err.traceback, chunk.start + err.offset, item,
                                     worker_label)
            self.item_failed(chunk.start + err.offset, item, error, chunk.attempt, now,
                             infrastructure=False)
            if self.finished:
                return
            position = err.offset + 1
        ran = len(values)
        if ran > position:
            self._deliver(chunk.start + position, ran - position, values[position:ran])
        if ran < len(chunk.items) and not self.finished:
            # The worker stopped at an error (fail-fast) that turned out to be retried.
            rest = Chunk(self, chunk.start + ran, chunk.items[ran:], chunk.attempt)
            self.pending.appendleft(rest)

    def sent(self, chunk: Chunk, now: float) -> None:
        """``chunk`` went to a worker: it counts as in flight, and its clock starts."""
        self.in_flight += 1
        self.in_flight_items += len(chunk.items)
        if self.item_timeout is not None:
            chunk.deadline = now + self.item_timeout

    def returned(self, chunk: Chunk) -> None:
        """``chunk`` is back (answered, or its worker died): no longer in flight."""
        self.in_flight -= 1
        self.in_flight_items -= len(chunk.items)
        chunk.deadline = None

    def release_due(self, now: float) -> bool:
        """Move retries whose backoff has passed to the front of the queue; True if any."""
        due = [c for t, c in self.delayed if t <= now]
        if not due:
            return False
        self.delayed = [(t, c) for t, c in self.delayed if t > now]
        for chunk in sorted(due, key=lambda c: c.start, reverse=True):
            self.pending.appendleft(chunk)
        return True

    def item_failed(
        self,
        index: int,
        item: Any,
        error: BaseException,
        attempt: int,
        now: float,
        *,
        infrastructure: bool,
    ) -> None:
        """One item failed for good or for now: retry it, or apply the error policy."""
        delay = self.policy.delay(attempt, error, infrastructure=infrastructure)
        if delay is not None:
            retry = Chunk(self, index, [item], attempt + 1, isolated=True)
            self.delayed.append((now + delay, retry))
            if self.recorder is not None:
                self.recorder.incident(
                    "retry", None, self.record,
                    f"item {index} = {serialization.item_repr(item)}, attempt {attempt + 1} "
                    f"after {type(error).__name__}",
                )
            if self.retrying is not None:
                self.retrying.add(self)
            return
        if self.on_error == "raise":
            if self.errors_in_place:
                self._deliver(index, 1, [Raised(error)])
                return
            self.fail(error)
            return
        self.failures.append(Failure(index, serialization.item_repr(item), error))
        self._deliver(index, 1, [error] if self.on_error == "collect" else [])

    def _deliver(self, start: int, length: int, values: list) -> None:
        if self.finished:
            return
        for batch in self.reorder.add(start, length, values):
            self.sink.deliver(batch)
        if self.progress is not None:
            try:
                self.progress.update(length)
            except BaseException as exc:  # the caller's bar broke: fail its call, not the pool
                self.progress = None
                self.fail(exc)

    def requeue(self, chunk: Chunk) -> None:
        """Send ``chunk`` again as it was (it never started: queued behind a dead worker's)."""
        release(chunk)
        chunk.deadline = None
        self.pending.appendleft(chunk)

    def isolate(self, chunk: Chunk) -> None:
        """Re-run a multi-item chunk whose worker died one item at a time, to find the culprit."""
        release(chunk)
        for offset in range(len(chunk.items) - 1, -1, -1):
            self.pending.appendleft(
                Chunk(self, chunk.start + offset, [chunk.items[offset]], chunk.attempt,
                      isolated=True)
            )

    # -- the end ---------------------------------------------------------------------------

    @property
    def stops_at_first_error(self) -> bool:
        """Whether a worker may stop a chunk at its first error (no later item is wanted)."""
        return self.on_error == "raise" and self.policy.retries == 0 and not self.errors_in_place

    def is_complete(self) -> bool:
        return (
            self.exhausted and not self.pending and not self.delayed and self.in_flight == 0
        )

    def maybe_finish(self) -> bool:
        """Settle the job if every item is done; True once it is settled (either way)."""
        if self.finished:
            return True
        if self.is_complete():
            if self.input_error is not None:
                self.fail(self.input_error)  # every item read before it is delivered by now
                return True
            self.finished = True
            self.record.ended = time.monotonic()
            broken_bar = self._close_progress()
            if broken_bar is not None:
                self.sink.fail(broken_bar)
                return True
            self.failures.sort(key=lambda f: f.index)
            self.sink.finish(self.failures)
            return True
        return False

    def fail(self, error: BaseException) -> None:
        if self.finished:
            return
        self.finished = True
        self.record.ended = time.monotonic()
        for chunk in self.pending:
            release(chunk)  # a chunk packed ahead holds shared memory
        self.pending.clear()
        self.delayed.clear()
        self._close_progress()
        self.sink.fail(error)

    def _close_progress(self) -> BaseException | None:
        """Close the progress bar; what its close() raised, if it raised."""
        bar, self.progress = self.progress, None
        if bar is not None:
            try:
                bar.close()
            except BaseException as exc:
                return exc
        return None


class Call:
    """One call of one item (``apply_async``, ``submit``) waiting in the manager's queue.

    A pending call is kept this small, and becomes a full :class:`Job` only when it reaches the
    head of the queue (:meth:`job`): a million pending ``apply_async`` calls then hold about a
    million of these (~100 bytes each), their arguments and their result objects, not a million
    jobs with their sizers, queues and reorderers (~3 KB each, and three times the objects for
    the garbage collector to walk).
    """

    __slots__ = (
        "finished",
        "fn_blob",
        "fn_cached",
        "fn_id",
        "function",
        "item",
        "mode",
        "on_dispatch",
        "options",
        "sink",
        "workers",
    )

    def __init__(self, fn_id: int, fn_blob: bytes, fn_cached: bool, item: Any, sink: Sink,
                 mode: int, options: TaskOptions, on_dispatch: Callable[[], bool] | None,
                 workers: int, function: str = "") -> None:
        self.fn_id = fn_id
        self.fn_blob = fn_blob
        self.fn_cached = fn_cached
        self.item = item
        self.sink = sink
        self.mode = mode
        self.options = options
        self.on_dispatch = on_dispatch
        self.workers = workers
        self.function = function
        self.finished = False

    def job(self) -> Job:
        """The job that runs this call."""
        return Job(self.fn_id, self.fn_blob, [self.item], self.sink, workers=self.workers,
                   mode=self.mode, options=self.options, on_dispatch=self.on_dispatch,
                   fn_cached=self.fn_cached, function=self.function)

    def fail(self, error: BaseException) -> None:
        """Fail the call before it ever became a job (pool stopped, cancelled)."""
        if not self.finished:
            self.finished = True
            self.sink.fail(error)


class CallChunk(Chunk):
    """A tiny one-item call's chunk, sent in a batch without becoming a :class:`Job`.

    ``apply_async``/``submit`` in a loop: when the call's function has a learned cost under
    ``BATCH_TARGET_SECONDS``, the manager sends its :class:`Call` as it is, and settles a
    successful answer directly on the call's sink (its value, its statistics). A job per call
    (a sizer, a reorderer, a retry policy, a record, and the bookkeeping of each answer through
    them) was most of the manager's time per call. Anything else (a task error, a worker's
    death, an answer that does not unpickle) goes the general way: reading :attr:`job` turns the
    call into a real job first (``adopt``, the manager's), which from then on is the job.
    """

    def __init__(self, call: Call, cost: float, adopt: Callable[[CallChunk], Job]) -> None:
        self.call = call
        self.cost = cost  # the function's learned seconds per call, when it was sent
        self.on_the_way = False  # written to a worker's outbox (in flight, for ``adopt``)
        self.sent_at = 0.0  # when (time.monotonic()), for the call's statistics
        self._adopt = adopt
        self._job: Job | None = None
        super().__init__(None, 0, [call.item], isolated=False)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def job(self) -> Job:
        if self._job is None:
            self._job = self._adopt(self)
        return self._job

    @job.setter
    def job(self, value: Job | None) -> None:
        self._job = value

    @property
    def adopted(self) -> bool:
        """Whether the call became a job (a failure, or a crash, took it the general way)."""
        return self._job is not None


def release(chunk: Chunk) -> None:
    """Forget a chunk's packed form, freeing shared memory a dead worker never consumed."""
    if chunk.segments:
        shm.discard(chunk.segments)
        chunk.segments = []
    chunk.payload = None


def attach_traceback(
    error: BaseException, tb: str, index: int, item: Any, worker_label: str
) -> BaseException:
    """Give a task's exception the worker's traceback as __cause__ and a note naming the item."""
    if tb and error.__cause__ is None:
        error.__cause__ = _errors.remote_traceback(tb)
    note = f"allcores: raised by item {index} = {serialization.item_repr(item)} in {worker_label}"
    add_note(error, note)
    return error


def add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` where it can be done: a task's exception may carry a
    ``__notes__`` that is not a list, and one odd exception must not stop the pool (the note is
    left out then); on Python 3.10 the note goes to ``__notes__`` all the same."""
    _errors.add_note(error, note)
