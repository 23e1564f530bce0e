"""The cluster engine: the facades' :class:`Engine` door, with cluster tasks instead of pipes.

It reuses the local engine's :class:`Job` whole (chunk cutting, ``ChunkSizer``, ``RetryPolicy``,
the error policies, ordering, progress) and plays the manager's part in one thread of its own,
which blocks on one queue of events (a call submitted or cancelled, a task done, the caller took
results) with the next deadline as its timeout::

    caller thread          engine thread                        cluster        cluster worker
    -------------          -------------                        -------        --------------
    Pool.map(fn, items)
      start() -> Submit -> put(fn) once per call (scatter/put)
                           Job.next_chunk() (ChunkSizer, 50 ms)
                           pickle items, submit(key per attempt) -> scheduler -> run_isolated
                                                                                (Dask: a local
                                                                                allcores pool)
                                                                                or run_inline
                                                                                (Ray)
                           task done (engine's callback) <----- pickled answer: values, errors
                           Job: deliver / retry / collect / raise
                           crash -> re-run the chunk item by item
                           deadline (Ray) -> cancel(force) -> TaskTimeoutError
    sink.get() / next() <- sink.deliver() / finish() / fail()

The engines' own blind retries are off (Dask ``retries=0``, Ray ``max_retries=0``) and every
attempt has its own key, so a re-run is never deduplicated or served from a cache.
"""

from __future__ import annotations

import io
import itertools
import pickle
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from typing import Any

from allcores import errors as _errors
from allcores._engine import serialization
from allcores._engine.client import Engine, function_name
from allcores._engine.jobs import Chunk, Job, Sink, attach_traceback
from allcores._engine.messages import CALL_ONE
from allcores._engine.options import TaskOptions
from allcores._engine.recording import Recorder, Span
from allcores._engine.scheduler import ChunkSizer
from allcores.backends import _remote
from allcores.backends._base import ChunkTask, ClusterBackend, Outcome

# A chunk task's round trip through a cluster scheduler is about 1 ms (Dask's documented
# per-task overhead; Ray's is similar), ten times the local pipe's. Chunks aim at 50 ms of work
# (the round trip costs about 2%) and never go under 10 ms once the cost is known. Not longer:
# the cost is learned from chunks already done, so on a skewed input (W3b: the 200 ms items
# last) a longer aim packs several heavy items into one chunk and one worker ends alone; at
# 50 ms the chunks shrink to one heavy item each in time (measured: 200 ms chunks ran W3b at
# 1.0x serial on Ray, slower than ray's Pool.map).
CLUSTER_TARGET_CHUNK_SECONDS = 0.05
CLUSTER_MIN_CHUNK_SECONDS = 0.01
# Chunks in flight per cluster slot: one running and one queued behind it, so no slot waits a
# round trip between two chunks; more would only make the tail less balanced.
IN_FLIGHT_PER_SLOT = 2


def _share_class() -> Any:
    shared = sys.modules.get("allcores.shared")
    return None if shared is None else shared.SharedArray


def _refuse_writable(obj: Any) -> None:
    if obj.writable:
        raise _errors.ArgumentPicklingError(
            "a writable allcores.SharedArray cannot be used on a cluster: its memory lives on "
            "this machine, and the workers' writes would never come back. Return the results "
            "from the task instead (they are gathered for you), or run locally."
        )


class _ItemPickler(pickle.Pickler):
    """Pickles a chunk's items; a read-only share goes into the engine's store once per call
    and travels as its token (``ClusterCall.shares``), a writable one is refused."""

    def __init__(self, buffer: io.BytesIO, call: ClusterCall) -> None:
        super().__init__(buffer, serialization.PROTOCOL)
        self.call = call

    def reducer_override(self, obj: Any) -> Any:
        cls = _share_class()
        if cls is None or not isinstance(obj, cls):
            return NotImplemented
        _refuse_writable(obj)
        token = obj.name
        if token not in self.call.shares:
            self.call.shares[token] = self.call.backend.put(obj.array)
        return (_remote.shared_from_store, (token,))


def _dumps_function(fn: Any) -> bytes:
    """cloudpickle, with shares inside (closures, partials) carried by value: the function
    itself goes into the store once per call."""
    import cloudpickle

    class _FunctionPickler(cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            cls = _share_class()
            if cls is not None and isinstance(obj, cls):
                _refuse_writable(obj)
                return (_remote.ClusterShare, (obj.array.copy(),))
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    _FunctionPickler(buffer, serialization.PROTOCOL).dump(fn)
    return buffer.getvalue()


class ClusterCall:
    """One call on the cluster: its Job and its running tasks. Engine-thread only, except the
    constructor (the caller's thread: a function that does not pickle fails the call at once)."""

    def __init__(self, engine: ClusterEngine, fn: Callable[..., Any], iterable: Iterable[Any],
                 sink: Sink, *, mode: int, ordered: bool, options: TaskOptions,
                 on_dispatch: Callable[[], bool] | None, max_outstanding: int | None,
                 errors_in_place: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"the task function must be callable, got {fn!r}")
        try:
            self.fn_blob: bytes | None = _dumps_function(fn)
        except _errors.ArgumentPicklingError:
            raise
        except Exception as exc:
            raise _errors.ArgumentPicklingError(
                serialization.pickling_hint("the task function", fn, exc)
                + " Functions may be lambdas or closures, but everything they reference must "
                "pickle too."
            ) from exc
        backend = engine.backend
        self.engine = engine
        self.backend = backend
        self.call_id = f"allcores-{uuid.uuid4().hex[:16]}"
        self.timeout = options.item_timeout
        slots = engine.workers
        self.job = Job(0, b"", iterable, sink, workers=slots, mode=mode, ordered=ordered,
                       options=options, on_dispatch=on_dispatch,
                       max_outstanding=max_outstanding or IN_FLIGHT_PER_SLOT * slots,
                       function=function_name(fn), errors_in_place=errors_in_place)
        self.job.recorder = engine.recorder
        # Where the engine enforces timeouts (not isolated), a timed item runs alone in its task
        # and only as many tasks as slots are out, so each starts when sent and its clock is
        # right; isolated backends enforce them per item on the worker and keep their chunks.
        self.timed_here = self.timeout is not None and not backend.isolated
        self.job.sizer = ChunkSizer(
            slots,
            1 if self.timed_here else options.chunksize,
            target_seconds=CLUSTER_TARGET_CHUNK_SECONDS,
            min_seconds=CLUSTER_MIN_CHUNK_SECONDS,
        )
        self.slots = slots
        self.limit = slots if self.timed_here else IN_FLIGHT_PER_SLOT * slots
        self.running: dict[Any, ChunkTask] = {}
        self._attempts = itertools.count()
        self.fn_ref: Any = None
        self.shares: dict[str, Any] = {}  # share name -> its reference in the store

    def begin(self) -> None:
        """Place the function in the engine's store: once per call, whatever the chunks."""
        self.fn_ref = self.backend.put(self.fn_blob)
        self.fn_blob = None

    def next_wake(self) -> float | None:
        times = [t for t, _ in self.job.delayed]
        times.extend(t.deadline for t in self.running.values() if t.deadline is not None)
        return min(times) if times else None

    def feed(self, now: float) -> None:
        job = self.job
        job.release_due(now)
        while len(self.running) < self.limit and job.can_feed():
            # Until the first answer, one one-item probe per slot: nothing is known to size by.
            if not job.sizer.learned and not job.pending and len(self.running) >= self.slots:
                break
            # In a map's tail, as locally (ChunkSizer.in_tail), a chunk is cut only when a slot
            # is free: a chunk cut earlier is sized on what was known then, and on a skewed
            # map (W3b: the heavy items last) it may pair a heavy item with the ones before it.
            if len(self.running) >= self.slots and self._in_tail():
                break
            chunk = job.next_chunk()
            if chunk is None:
                break
            self._submit(chunk, now)
            if job.finished:
                break

    def _in_tail(self) -> bool:
        job = self.job
        if job.total is None:
            return False
        remaining = job.total - job.next_index + sum(len(c.items) for c in job.pending)
        return job.sizer.in_tail(remaining)

    def _submit(self, chunk: Chunk, now: float) -> None:
        job = self.job
        items = chunk.items if isinstance(chunk.items, range) else list(chunk.items)
        try:
            buffer = io.BytesIO()
            _ItemPickler(buffer, self).dump(items)
            items_blob = buffer.getvalue()
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
                                     self.timeout, chunk.start, dict(self.shares))
        job.sent(chunk, now)
        if not self.timed_here:
            chunk.deadline = None  # enforced on the worker (isolated), or no timeout at all
        self.running[handle] = ChunkTask(key, handle, chunk, chunk.deadline)
        self.engine._watch(handle, self)

    # -- answers ---------------------------------------------------------------------------

    def take(self, handle: Any, now: float) -> None:
        task = self.running.pop(handle, None)
        if task is None:
            return  # cancelled meanwhile (a timeout, a stop)
        self.job.returned(task.chunk)
        if self.job.finished:
            return
        self._outcome(task.chunk, self.backend.outcome(handle), now)

    def _outcome(self, chunk: Chunk, outcome: Outcome, now: float) -> None:
        job = self.job
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
            values, errors, timing, where = serialization.loads(outcome.answer)
            timing = _remote.Timing(*timing)
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
            job.sizer.observe(len(values), timing.seconds)
            self.engine.record(job, where, timing, len(values), now)
        position = 0
        for offset, error, tb, infrastructure in errors:
            if offset > position:
                job._deliver(chunk.start + position, offset - position, values[position:offset])
            item = chunk.items[offset]
            if not infrastructure:
                error = attach_traceback(error, tb, chunk.start + offset, item, label)
            else:  # isolated: the worker's local pool stopped or lost a process for this item
                kind = "timeout" if isinstance(error, _errors.TaskTimeoutError) else "crash"
                self.engine.incident(kind, job, f"item {chunk.start + offset} on {where}")
            job.item_failed(chunk.start + offset, item, error, chunk.attempt, now,
                            infrastructure=infrastructure)
            if job.finished:
                return
            position = offset + 1
        if len(values) > position:
            job._deliver(chunk.start + position, len(values) - position, values[position:])

    def _crashed(self, chunk: Chunk, cause: str, now: float) -> None:
        job = self.job
        self.engine.incident("crash", job, f"items {chunk.start}.. ({len(chunk.items)}): {cause}")
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

    def enforce_deadlines(self, now: float) -> None:
        due = [t for t in self.running.values() if t.deadline is not None and t.deadline <= now]
        if not due:
            return
        expired = []
        wall = time.time()
        for task in due:
            # The first deadline counts from submission; the item's own clock starts when it
            # does (a task may have waited for a worker to start), so look before cancelling.
            started = self.backend.started_at(task.handle)
            assert self.timeout is not None
            if started is None:
                task.deadline = now + self.timeout  # the earliest it could run out
            elif started + self.timeout > wall:
                task.deadline = now + (started + self.timeout - wall)
            else:
                expired.append(task)
        if not expired:
            return
        self.backend.cancel([t.handle for t in expired], self.call_id)
        for task in expired:
            del self.running[task.handle]
            self.job.returned(task.chunk)
            if self.job.finished:
                continue
            chunk = task.chunk
            item = chunk.items[0]
            self.engine.incident("timeout", self.job, f"item {chunk.start}")
            error = _errors.TaskTimeoutError(
                f"item {chunk.start} = {serialization.item_repr(item)} ran longer than its "
                f"timeout of {self.timeout:g} s; its {self.backend.name} task was cancelled "
                "and its worker process killed"
            )
            self.job.item_failed(chunk.start, item, error, chunk.attempt, now,
                                 infrastructure=True)

    # -- the end ---------------------------------------------------------------------------

    def stop(self, error: BaseException | None = None) -> None:
        """Cancel every task still running (fail-fast, Ctrl-C, an early break); idempotent."""
        if self.running:
            handles = list(self.running)
            self.running.clear()
            self.backend.cancel(handles, self.call_id)
        if not self.job.finished:
            self.job.fail(error or CancelledError())
        if self.fn_ref is not None:
            self.backend.forget(self.fn_ref)
            self.fn_ref = None
        for ref in self.shares.values():
            self.backend.forget(ref)
        self.shares.clear()


_RUNNING, _CLOSING, _DONE = "running", "closing", "done"


class ClusterEngine(Engine):
    """Runs calls on a cluster backend; one thread, blocking on one queue of events.

    Events: ``("submit", call)``, ``("cancel", call, error)``, ``("done", handle)`` (posted by
    the engine's completion callback), ``("wake",)`` (the caller took results, or close()),
    ``("terminate",)``. The thread's wait times out at the next deadline (a retry's backoff, a
    timed item on an engine without isolation), so nothing is polled.
    """

    def __init__(self, backend: ClusterBackend, options: TaskOptions | None = None) -> None:
        self.backend = backend
        self.workers = backend.slots()
        self.options = options or TaskOptions()
        self._events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._calls: list[ClusterCall] = []
        self._owner: dict[Any, ClusterCall] = {}
        self._state = _RUNNING
        self._state_lock = threading.Lock()
        # Run statistics, as the local manager keeps them: one span per chunk, from the chunk's
        # own timestamps on its cluster worker; a worker's number is its order of appearance
        # (a Dask worker's address, a Ray worker process).
        self.recorder = Recorder(self.workers)
        self._worker_numbers: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="allcores-cluster", daemon=True)
        self._thread.start()

    # -- the door ----------------------------------------------------------------------------

    def start(self, fn: Callable[..., Any], iterable: Iterable[Any], sink: Sink, *,
              mode: int = CALL_ONE, ordered: bool = True, options: TaskOptions | None = None,
              on_dispatch: Callable[[], bool] | None = None,
              max_outstanding: int | None = None, errors_in_place: bool = False) -> object:
        if self._state != _RUNNING:
            raise _errors.PoolClosedError(
                "this pool was closed or terminated: create a new one to submit more work"
            )
        call = ClusterCall(self, fn, iterable, sink, mode=mode, ordered=ordered,
                           options=options or self.options, on_dispatch=on_dispatch,
                           max_outstanding=max_outstanding, errors_in_place=errors_in_place)
        self._events.put(("submit", call))
        return call

    def cancel(self, handle: object, error: BaseException) -> None:
        self._events.put(("cancel", handle, error))

    def consumed(self) -> None:
        self._events.put(("wake",))

    def close(self) -> None:
        with self._state_lock:
            if self._state == _RUNNING:
                self._state = _CLOSING
        self._events.put(("wake",))

    def terminate(self) -> None:
        with self._state_lock:
            if self._state == _DONE:
                return
            self._state = _CLOSING
        self._events.put(("terminate",))
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def statistics(self) -> Any:
        """The :class:`allcores.RunStats` of everything this engine ran so far."""
        from allcores._stats import pool_stats

        return pool_stats(self.recorder)

    def record(self, job: Job, where: str, timing: _remote.Timing, items: int,
               now: float) -> None:
        """Note a chunk's run (engine thread). The worker stamped its start with the wall clock
        (``time.time()``: a cluster's machines share no monotonic clock); it is moved onto
        this process's monotonic clock here, so on several machines the spans are as right as
        their clocks are in step (NTP: a few milliseconds)."""
        if not timing.started:
            return
        number = self._worker_numbers.setdefault(where, len(self._worker_numbers))
        start = timing.started - (time.time() - time.monotonic())
        end = start + timing.seconds
        self.recorder.chunk(job.record, Span(
            number, job.id, start, end, items, timing.seconds, timing.load,
            max(0.0, now - end), 1, 0, timing.cpu,
        ), 0.0)

    def incident(self, kind: str, job: Job, detail: str) -> None:
        """Note a crash or a timeout (engine thread); the worker is unknown on a cluster."""
        self.recorder.incident(kind, None, job.record, detail)

    @property
    def accepting(self) -> bool:
        return self._state == _RUNNING

    # -- the engine thread ---------------------------------------------------------------------

    def _watch(self, handle: Any, call: ClusterCall) -> None:
        self._owner[handle] = call
        events = self._events
        self.backend.on_done(handle, lambda: events.put(("done", handle)))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # allcores' own bug: fail every call, never hang one
            error = _errors.InternalError(f"the cluster engine stopped: {exc!r}")
            error.__cause__ = exc
            for call in list(self._calls):
                self._stop(call, error)
        finally:
            with self._state_lock:
                self._state = _DONE

    def _loop(self) -> None:
        while True:
            wakes = [w for w in (c.next_wake() for c in self._calls) if w is not None]
            timeout = max(0.0, min(wakes) - time.monotonic()) if wakes else None
            try:
                events = [self._events.get(timeout=timeout)]
            except queue.Empty:
                events = []
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            now = time.monotonic()
            for event in events:
                kind = event[0]
                if kind == "terminate":
                    closed = _errors.PoolClosedError(
                        "the pool was terminated before this call finished"
                    )
                    for call in list(self._calls):
                        self._stop(call, closed)
                    self._calls.clear()
                    return
                if kind == "submit":
                    call = event[1]
                    self.recorder.call_started(call.job.record)
                    try:
                        call.begin()
                    except BaseException as exc:
                        call.job.fail(exc)
                        continue
                    self._calls.append(call)
                elif kind == "cancel":
                    call = event[1]
                    if call in self._calls:
                        self._stop(call, event[2])
                elif kind == "done":
                    owner = self._owner.pop(event[1], None)
                    if owner is not None:
                        self._guarded(owner, owner.take, event[1], now)
            for call in list(self._calls):
                self._guarded(call, call.enforce_deadlines, now)
                self._guarded(call, call.feed, now)
                if call.job.finished or call.job.maybe_finish():
                    self._stop(call, None)
            if self._state != _RUNNING and not self._calls:
                return

    def _guarded(self, call: ClusterCall, step: Callable[..., None], *args: Any) -> None:
        """Run one step of a call; an error in it fails that call alone."""
        if call.job.finished:
            return
        try:
            step(*args)
        except BaseException as exc:
            error = _errors.InternalError(
                f"allcores failed handling a call on the {self.backend.name} cluster: {exc!r}"
            )
            error.__cause__ = exc
            call.job.fail(error)

    def _stop(self, call: ClusterCall, error: BaseException | None) -> None:
        for handle in call.running:
            self._owner.pop(handle, None)
        try:
            call.stop(error)
        except BaseException as exc:  # the cluster went away: the call fails, the engine lives
            if not call.job.finished:
                call.job.fail(exc)
        if call in self._calls:
            self._calls.remove(call)
