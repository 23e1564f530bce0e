"""The driver of one call on a cluster: the local manager's job, with tasks instead of pipes.

It reuses the engine's :class:`Job` whole (chunk cutting, ``ChunkSizer``, ``RetryPolicy``, the
error policies, ordering, progress) and plays the manager's part in the caller's thread::

    caller thread (driver)                      cluster                  cluster worker
    ----------------------                      -------                  --------------
    Job.next_chunk()  (ChunkSizer, 0.2 s aim)
    pickle items ------ submit(key per attempt) --> scheduler --> task: run_isolated (Dask:
                                                                   a local allcores pool) or
                                                                   run_inline (Ray)
    wait(any of the running, next deadline) <---- pickled answer <-- values, errors, seconds
    answer -> Job: deliver / retry / collect / raise; crash -> re-run item by item;
    deadline passed (Ray) -> cancel(force) -> TaskTimeoutError

The engines' own blind retries are off (Dask ``retries=0``, Ray ``max_retries=0``) and every
attempt has its own key, so a re-run is never deduplicated or served from a cache.
"""

from __future__ import annotations

import collections
import io
import itertools
import pickle
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from allcores import errors as _errors
from allcores._engine import serialization
from allcores._engine.client import TaskOptions, parse_chunksize
from allcores._engine.jobs import Chunk, Failure, Job, MapResults, Sink, attach_traceback
from allcores._engine.scheduler import ChunkSizer
from allcores.backends._base import ChunkTask, ClusterBackend, Outcome

# A chunk task's round trip through a cluster scheduler is about 1 ms (Dask's documented
# per-task overhead; Ray's is similar), ten times the local pipe's: chunks aim at ten times the
# local engine's 20 ms so the round trip still costs about 0.5%, and never go under 20 ms of
# work once the cost is known.
CLUSTER_TARGET_CHUNK_SECONDS = 0.2
CLUSTER_MIN_CHUNK_SECONDS = 0.02
# Chunks in flight per cluster slot: one running and one queued behind it, so no slot waits a
# round trip between two chunks; more would only make the tail less balanced.
IN_FLIGHT_PER_SLOT = 2


class _Collect(Sink):
    """Batches of results as the job delivers them, taken by the caller's own thread."""

    def __init__(self, bounded: bool) -> None:
        self.bounded = bounded
        self.batches: collections.deque[list] = collections.deque()
        self.failures: list[Failure] = []
        self.error: BaseException | None = None
        self.done = False

    def deliver(self, values: list) -> None:
        if values:
            self.batches.append(values)

    def finish(self, failures: list[Failure]) -> None:
        self.failures = failures
        self.done = True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True

    def unconsumed(self) -> int:
        # A map keeps every result anyway; only an imap's unread batches hold input back.
        return len(self.batches) if self.bounded else 0


def _share_reduction(obj: Any) -> Any:
    """How a ``SharedArray`` pickles for a cluster, or NotImplemented for anything else.

    Its memory lives on this machine, so a read-only share travels as its plain array (inside
    the function or a partial, that is once per call, through the engine's store), and a
    writable one is refused: the workers' writes could never come back.
    """
    shared = sys.modules.get("allcores.shared")
    if shared is None or not isinstance(obj, shared.SharedArray):
        return NotImplemented
    if obj.writable:
        raise _errors.ArgumentPicklingError(
            "a writable allcores.SharedArray cannot be used on a cluster: its memory lives on "
            "this machine, and the workers' writes would never come back. Return the results "
            "from the task instead (they are gathered for you), or run locally."
        )
    return (_identity, (obj.array.copy(),))


def _identity(value: Any) -> Any:
    return value


class _DataPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        return _share_reduction(obj)


def _dumps(obj: Any, function: bool) -> bytes:
    """Pickle a call's function (cloudpickle) or a chunk's items (pickle), shares handled."""
    buffer = io.BytesIO()
    if function:
        import cloudpickle

        class _FunctionPickler(cloudpickle.CloudPickler):
            def reducer_override(self, obj: Any) -> Any:
                reduced = _share_reduction(obj)
                if reduced is NotImplemented:
                    return super().reducer_override(obj)
                return reduced

        _FunctionPickler(buffer, serialization.PROTOCOL).dump(obj)
    else:
        _DataPickler(buffer, serialization.PROTOCOL).dump(obj)
    return buffer.getvalue()


class ClusterCall:
    """One map/imap on a cluster, driven from the caller's thread by :meth:`step`."""

    def __init__(
        self,
        backend: ClusterBackend,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        mode: int,
        chunksize: Any,
        ordered: bool,
        options: TaskOptions,
        progress: Any,
        bounded: bool,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"the task function must be callable, got {fn!r}")
        self.backend = backend
        self.call_id = f"allcores-{uuid.uuid4().hex[:16]}"
        self.timeout = options.timeout
        slots = backend.slots()
        try:
            fn_blob = _dumps(fn, function=True)
        except _errors.ArgumentPicklingError:
            raise
        except Exception as exc:
            raise _errors.ArgumentPicklingError(
                serialization.pickling_hint("the task function", fn, exc)
                + " Functions may be lambdas or closures, but everything they reference must "
                "pickle too."
            ) from exc
        self.sink = _Collect(bounded)
        fixed = parse_chunksize(chunksize)
        self.job = Job(0, b"", iterable, self.sink, workers=slots, mode=mode, ordered=ordered,
                       on_error=options.on_error, policy=options.policy(),
                       max_outstanding=IN_FLIGHT_PER_SLOT * slots)
        # Where the driver enforces timeouts (not isolated), a timed item runs alone in its task
        # and only as many tasks as slots are out, so each starts when sent and its clock is
        # right; isolated backends enforce per item on the worker and keep their chunks.
        self.timed_here = self.timeout is not None and not backend.isolated
        self.job.sizer = ChunkSizer(
            slots,
            1 if self.timed_here else fixed,
            target_seconds=CLUSTER_TARGET_CHUNK_SECONDS,
            min_seconds=CLUSTER_MIN_CHUNK_SECONDS,
        )
        self.slots = slots
        self.limit = slots if self.timed_here else IN_FLIGHT_PER_SLOT * slots
        if progress:
            from allcores._progress import make_progress

            self.job.progress = make_progress(progress, self.job.total)
        self.running: dict[Any, ChunkTask] = {}
        self._attempts = itertools.count()
        self.fn_ref = backend.put(fn_blob)  # once per call, whatever the number of chunks

    # -- one round -------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.job.finished and not self.running

    def step(self) -> None:
        """Send what may be sent, wait for one task (or a deadline), take its answer."""
        job = self.job
        now = time.monotonic()
        self._release_due(now)
        self._feed(now)
        if job.finished or job.maybe_finish():
            self.stop()
            return
        wake = self._next_wake()
        if not self.running:
            if wake is not None:  # only retries waiting out their backoff
                time.sleep(max(0.0, wake - now))
            return
        timeout = None if wake is None else max(0.0, wake - now)
        done = self.backend.wait(list(self.running), timeout)
        now = time.monotonic()
        for handle in done:
            task = self.running.pop(handle, None)
            if task is None:
                continue
            job.in_flight -= 1
            self._take(task, self.backend.outcome(handle), now)
            if job.finished:
                break
        self._enforce_deadlines(now)
        if job.finished or job.maybe_finish():
            self.stop()

    def _next_wake(self) -> float | None:
        times = [t for t, _ in self.job.delayed]
        times.extend(t.deadline for t in self.running.values() if t.deadline is not None)
        return min(times) if times else None

    def _release_due(self, now: float) -> None:
        job = self.job
        if job.delayed:
            due = [c for t, c in job.delayed if t <= now]
            if due:
                job.delayed = [(t, c) for t, c in job.delayed if t > now]
                for chunk in reversed(due):
                    job.pending.appendleft(chunk)

    def _feed(self, now: float) -> None:
        job = self.job
        while len(self.running) < self.limit and job.can_feed():
            # Until the first answer, one one-item probe per slot: nothing is known to size by.
            if not job.sizer.learned and not job.pending and len(self.running) >= self.slots:
                break
            chunk = job.next_chunk()
            if chunk is None:
                break
            self._submit(chunk, now)
            if job.finished:
                break

    def _submit(self, chunk: Chunk, now: float) -> None:
        job = self.job
        items = chunk.items if isinstance(chunk.items, range) else list(chunk.items)
        try:
            items_blob = _dumps(items, function=False)
        except Exception as exc:
            if len(chunk.items) > 1:
                job.isolate(chunk)  # find which item does not pickle
                return
            error = exc if isinstance(exc, _errors.ArgumentPicklingError) else (
                _errors.ArgumentPicklingError(
                    serialization.pickling_hint(f"item {chunk.start}", chunk.items[0], exc)
                )
            )
            job.item_failed(chunk.start, chunk.items[0], error, job.policy.retries + 1, now,
                            infrastructure=False)
            return
        key = f"{self.call_id}-{chunk.start}-{next(self._attempts)}"
        handle = self.backend.submit(key, self.call_id, self.fn_ref, items_blob, job.mode,
                                     self.timeout, chunk.start)
        deadline = now + self.timeout if self.timed_here and self.timeout is not None else None
        self.running[handle] = ChunkTask(key, handle, chunk, deadline)
        job.in_flight += 1

    # -- answers ---------------------------------------------------------------------------

    def _take(self, task: ChunkTask, outcome: Outcome, now: float) -> None:
        job, chunk = self.job, task.chunk
        if outcome.error is not None:
            job.fail(outcome.error)
            return
        if outcome.lost is not None:
            job.requeue(chunk)
            return
        if outcome.crashed is not None:
            self._crashed(chunk, outcome.crashed, now)
            return
        assert outcome.answer is not None
        try:
            values, errors, seconds, where = serialization.loads(outcome.answer)
        except Exception as exc:
            for offset, item in enumerate(chunk.items):
                error: BaseException = _errors.ResultPicklingError(
                    f"the results of items {chunk.start}..{chunk.start + len(chunk.items) - 1} "
                    f"could not be unpickled here: {exc!r}. Return plain data, or types "
                    "importable on this machine."
                )
                job.item_failed(chunk.start + offset, item, error, job.policy.retries + 1, now,
                                infrastructure=False)
                if job.finished:
                    return
            return
        label = f"{self.backend.name} worker {where}"
        if errors and errors[0][0] == -1:  # the chunk could not be loaded on the worker
            _, error, tb, _ = errors[0]
            if len(chunk.items) > 1:
                job.isolate(chunk)
            else:
                error = attach_traceback(error, tb, chunk.start, chunk.items[0], label)
                job.item_failed(chunk.start, chunk.items[0], error, job.policy.retries + 1, now,
                                infrastructure=False)
            return
        if values:
            job.sizer.observe(len(values), seconds)
        position = 0
        for offset, error, tb, infrastructure in errors:
            if offset > position:
                job._deliver(chunk.start + position, offset - position, values[position:offset])
            item = chunk.items[offset]
            if not infrastructure:
                error = attach_traceback(error, tb, chunk.start + offset, item, label)
            job.item_failed(chunk.start + offset, item, error, chunk.attempt, now,
                            infrastructure=infrastructure)
            if job.finished:
                return
            position = offset + 1
        if len(values) > position:
            job._deliver(chunk.start + position, len(values) - position, values[position:])

    def _crashed(self, chunk: Chunk, cause: str, now: float) -> None:
        job = self.job
        if len(chunk.items) > 1:
            job.isolate(chunk)  # which item killed it? run them one by one to find out
            return
        item = chunk.items[0]
        shown = serialization.item_repr(item)
        error = _errors.WorkerCrashedError(
            f"the {self.backend.name} worker running item {chunk.start} = {shown} died: {cause}. "
            "The cluster replaces it; the other items are not affected.",
            cause=cause,
            item_repr=shown,
        )
        job.item_failed(chunk.start, item, error, chunk.attempt, now, infrastructure=True)

    def _enforce_deadlines(self, now: float) -> None:
        expired = [t for t in self.running.values() if t.deadline is not None and t.deadline <= now]
        if not expired:
            return
        self.backend.cancel([t.handle for t in expired], self.call_id)
        for task in expired:
            del self.running[task.handle]
            self.job.in_flight -= 1
            if self.job.finished:
                continue
            chunk = task.chunk
            item = chunk.items[0]
            error = _errors.TaskTimeoutError(
                f"item {chunk.start} = {serialization.item_repr(item)} ran longer than its "
                f"timeout of {self.timeout:g} s; its {self.backend.name} task was cancelled "
                "and its worker process killed"
            )
            self.job.item_failed(chunk.start, item, error, chunk.attempt, now,
                                 infrastructure=True)

    # -- the end ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every task still running (fail-fast, Ctrl-C, an early break); idempotent."""
        if self.running:
            handles = list(self.running)
            self.running.clear()
            self.backend.cancel(handles, self.call_id)
        if not self.job.finished:
            self.job.fail(CancelledError())
        if self.fn_ref is not None:
            self.backend.forget(self.fn_ref)
            self.fn_ref = None


def run_map(backend: ClusterBackend, fn: Callable[..., Any], iterable: Iterable[Any], *,
            mode: int, chunksize: Any, ordered: bool, options: TaskOptions,
            progress: Any) -> MapResults:
    """A whole map on the cluster; the list of results (``MapResults``)."""
    call = ClusterCall(backend, fn, iterable, mode=mode, chunksize=chunksize, ordered=ordered,
                       options=options, progress=progress, bounded=False)
    try:
        while not call.finished:
            call.step()
    finally:
        call.stop()
    sink = call.sink
    if sink.error is not None:
        raise sink.error
    out = MapResults(itertools.chain.from_iterable(sink.batches), sink.failures)
    return out


class ClusterIterator:
    """Results of an imap on the cluster, driven as the caller consumes them."""

    def __init__(self, call: ClusterCall) -> None:
        self._call = call
        self._it = self._generate()

    @property
    def failures(self) -> list[Failure]:
        return self._call.sink.failures

    def _generate(self) -> Iterator[Any]:
        call = self._call
        sink = call.sink
        try:
            while True:
                while sink.batches:
                    yield from sink.batches.popleft()
                if sink.error is not None:
                    raise sink.error
                if call.finished or sink.done:
                    return
                call.step()
        finally:
            call.stop()

    def __iter__(self) -> ClusterIterator:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        """Stop early: tasks still running on the cluster are cancelled."""
        self._it.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def run_imap(backend: ClusterBackend, fn: Callable[..., Any], iterable: Iterable[Any], *,
             mode: int, chunksize: Any, ordered: bool, options: TaskOptions,
             progress: Any) -> ClusterIterator:
    call = ClusterCall(backend, fn, iterable, mode=mode, chunksize=chunksize, ordered=ordered,
                       options=options, progress=progress, bounded=True)
    return ClusterIterator(call)
