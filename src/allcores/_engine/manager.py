"""The manager: one thread in the caller's process that owns the workers and every job.

How a task travels::

    caller thread                 manager thread                        worker process
    -------------                 --------------                        --------------
    Pool.map(fn, items)
      LocalEngine.start()
      builds a Job + sink  --->   Submit/Cancel/Forget commands
                                  (a deque + the wake pipe)
                                  select() over the wake pipe,
                                  result pipes, worker pidfds,
                                  outboxes waiting to be written,
                                  and the next deadline
                                  Job.next_chunk() (ChunkSizer),
                                  has_room, batching (scheduler)
                                  outbox -> non-blocking write  RunChunk   main thread:
                                                          (or RunBatch) -> recv, run fn(item)...
                                                                 ChunkDone
                                  non-blocking read -> inbox <------------ values, errors,
                                  whole messages unpickled  (or BatchDone) seconds, rss
                                  Job.complete()
                                  Reorderer -> sink                        (+ a lifeline thread
      sink.get() / next()  <---   sink.deliver()/finish()/fail()           that exits the worker
                                                                           when the parent dies)

One ``select`` tells the manager everything: a command arrived, a result arrived, a worker died
(its pidfd, or its sentinel where there are no pidfds, became readable), a worker's pipe can take
more of its outbox, or a deadline passed (a timeout or a retry's backoff). It never polls, and
never blocks on one worker: a message the pipe cannot take waits in the worker's outbox, and a
message that has only partly arrived waits in its inbox. Each worker has its own pair of pipes,
so the manager always knows which chunks a dead worker held: the running one is re-run item by
item to find the culprit, queued ones are resent.

The manager keeps the I/O and the bookkeeping of workers; a :class:`Job` keeps its own (chunks
out and back, retries due, settling exactly once), and pure decisions live in ``scheduler.py``.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import os
import selectors
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from allcores import errors as _errors
from allcores._engine import collector, processes, recording, serialization, shm
from allcores._engine.jobs import (
    Call,
    CallChunk,
    Chunk,
    Job,
    add_note,
    attach_traceback,
    release,
)
from allcores._engine.messages import (
    BatchDone,
    ChunkDone,
    InitFailed,
    Ready,
    Recycled,
    RunBatch,
    RunChunk,
    Stop,
    TaskError,
)
from allcores._engine.processes import WorkerHandle
from allcores._engine.recording import CallRecord, Recorder, Span
from allcores._engine.scheduler import (
    COST_SMOOTHING,
    Verdict,
    admit,
    batch_limit,
    batchable,
    blame,
    describe_exit,
    has_room,
    may_queue,
    may_take_back,
    overdue,
    prefetch_budget,
    should_recycle,
)

# Private switch for benchmarks/w3s_skew.py --take-back-ab, which measures what taking chunks
# back gives by comparing pools with it on and off in one run. Read when a pool starts.
TAKE_BACK = True

# Dispatch looks at most this many waiting jobs for one worker in one round. Jobs passed over
# (back-pressured, or not allowed behind a busy worker's work) rotate to the back, so the next
# round looks at others: with a million pending apply_async calls a round stays O(1).
DISPATCH_SCAN_JOBS = 64

# Workers dying in a row with no chunk completed in between before the pool gives up: a worker
# that cannot even start (its memory limit, a broken interpreter) must not respawn forever.
MAX_CRASHES_IN_A_ROW = 20
# How often the machine's available memory is read while work is held back for lack of it
# (memory has no event to wait on; this is the engine's only timer that is not a deadline).
MEMORY_RECHECK_SECONDS = 0.1
# Argument segments that workers gave back, kept to be overwritten by the next big arguments
# (fresh shared-memory pages cost three times more than reused ones, and freeing them costs
# too). Kept across calls, so repeated maps over big arrays reuse them; at most this much, and
# freed when the pool has had no work for RECYCLE_IDLE_SECONDS or closes.
RECYCLE_MAX_BYTES = 512 << 20
RECYCLE_IDLE_SECONDS = 5.0
# How long terminate() waits for SIGTERMed workers before SIGKILL.
TERMINATE_GRACE = 0.5

_RUNNING, _CLOSING, _TERMINATING, _DONE = range(4)


# Commands: what a caller's thread asks of the manager thread, through the commands deque and
# the wake pipe. Typed like the pipe messages (messages.py), so each says what it carries.


@dataclass(frozen=True, slots=True)
class Submit:
    """Run ``job`` (a one-item :class:`Call` becomes a job once it is dispatched)."""

    job: Job | Call


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop feeding ``job`` and fail it with ``error``; chunks already running finish, unless
    ``stop_running``: then the workers running its items are killed (and replaced)."""

    job: Job | Call
    error: BaseException
    stop_running: bool = False


@dataclass(frozen=True, slots=True)
class Forget:
    """No job will send function ``fn_id`` again: workers may drop it."""

    fn_id: int


Command = Submit | Cancel | Forget
_live_managers: weakref.WeakSet[Manager] = weakref.WeakSet()


@atexit.register
def _terminate_all() -> None:
    for manager in list(_live_managers):
        manager.terminate()


class Manager:
    """Owns the worker processes of one pool and runs every job submitted to it."""

    def __init__(
        self,
        workers: int,
        context: Any,
        init: processes.Initializer | None = None,
        max_tasks_per_child: int | None = None,
        max_memory: int | None = None,
        memory_reserve: int | None = None,
    ) -> None:
        self.workers = workers
        self.memory_reserve = memory_reserve
        self._held_back = False  # work waits for memory (admission control)
        self._memory_available: int | None = None
        self._memory_read_at = float("-inf")
        self._segments = shm.SegmentPool(RECYCLE_MAX_BYTES)
        # Per-item cost of each cached function, so a new job of it (apply_async in a loop)
        # starts with what earlier jobs learned instead of a probe.
        self._function_costs: dict[int, float] = {}
        self._release_segments_at: float | None = None  # when an idle pool frees them
        self.context = context
        self.init = init
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory = max_memory
        self._state = _RUNNING
        # Reentrant: a finalizer may run inside any allocation of a thread that holds it (an
        # imap iterator or Executor.map generator collected during submit() wakes the manager
        # to cancel its call), and a plain Lock then deadlocks that thread against itself.
        self._state_lock = threading.RLock()
        self._commands: collections.deque[Command] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_pending = False
        os.set_blocking(self._wake_r, False)  # drained to the end, see _drain_wake
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._handles: dict[int, WorkerHandle] = {}
        # Jobs with chunks to send, in arrival order; a one-item Call waits here as itself and
        # becomes a Job when it reaches the head (_head).
        self._feedable: collections.deque[Job | Call] = collections.deque()
        self._queued: set[Job | Call] = set()  # the jobs in _feedable (a deque's `in` is O(n))
        self._jobs: set[Job | Call] = set()
        self._retrying: set[Job] = set()  # jobs with retries waiting out a backoff
        self._unpushed: set[WorkerHandle] = set()  # outboxes filled this round
        self._chunk_ids = itertools.count()
        self.taken_back = 0  # chunks taken back from one worker's pipe for another (tests)
        self._claims_out = 0  # claim ids in the workers' claim pipes (see _take_back)
        self._take_back_on = TAKE_BACK
        self._crashes_in_a_row = 0
        self._broken: BaseException | None = None
        self._collector_held = False  # see collector.py: many pending calls
        # The run statistics (pool.statistics(), MapResults.stats, reports): see recording.py.
        self.recorder: Recorder | None = Recorder(workers) if recording.ENABLED else None
        shm.sweep_stale()  # segments of runs that were SIGKILLed before they could clean up
        # Fork the first workers here, in the caller's thread, before the manager thread exists:
        # a fork from a single-threaded process is the safe kind.
        try:
            for slot in range(workers):
                self._start_worker(slot)
        except BaseException as exc:
            # A worker that cannot start (an initializer argument that does not pickle under
            # spawn) fails the constructor, as in the standard pools, and leaves nothing behind.
            handles = list(self._handles.values())
            self._handles.clear()
            for handle in handles:
                processes.kill(handle)
                processes.close_handle(handle)
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise _errors.start_error(exc) from None
        self._thread = threading.Thread(target=self._run, name="allcores-manager", daemon=True)
        self._thread.start()
        _live_managers.add(self)

    # -- the caller's side (any thread) ----------------------------------------------------

    def submit(self, job: Job | Call) -> None:
        with self._state_lock:
            if self._broken is not None:
                raise self._broken
            if self._state != _RUNNING:
                raise _errors.PoolClosedError(
                    "this pool is closed: create a new one (or use allcores.map, which keeps "
                    "its own)"
                )
            self._commands.append(Submit(job))
        self.wake()

    def forget_function(self, fn_id: int) -> None:
        """The pool no longer caches function ``fn_id``: workers may drop it."""
        self._commands.append(Forget(fn_id))
        self.wake()

    def cancel(self, job: Job | Call, error: BaseException, stop_running: bool = False) -> None:
        """Stop feeding ``job`` and fail it with ``error``; chunks already running finish,
        unless ``stop_running`` (see :class:`Cancel`)."""
        self._commands.append(Cancel(job, error, stop_running))
        self.wake()

    def wake(self) -> None:
        if self._wake_pending:
            return  # the manager has not drained the last wake yet: it will see this too
        with self._state_lock:  # never write to the descriptor after the manager closed it
            if self._state == _DONE:
                return
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: a wake is already pending

    def close(self) -> None:
        """No more jobs; workers exit once the submitted jobs are done."""
        with self._state_lock:
            if self._state == _RUNNING:
                self._state = _CLOSING
        self.wake()

    def terminate(self) -> None:
        """Stop every worker now; unfinished jobs fail with PoolClosedError."""
        with self._state_lock:
            if self._state == _DONE:
                return
            self._state = _TERMINATING
        self.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            # The manager is stuck (a callback that blocks?): kill the workers from here.
            for handle in list(self._handles.values()):
                processes.kill(handle)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the manager to finish after close() or terminate(); True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def accepting(self) -> bool:
        """True until close() or terminate()."""
        return self._state == _RUNNING

    def pids(self) -> list[int]:
        return [h.pid for h in list(self._handles.values()) if h.pid is not None]

    # -- the manager thread ----------------------------------------------------------------

    def _run(self) -> None:
        # Made here, in the thread that reads answers, rather than in __init__: the caller does
        # not pay for filling 1 MiB, and the first workers are not forked with it.
        self._read_scratch = processes.read_buffer()
        try:
            self._loop()
        except BaseException as exc:  # an engine bug must fail the jobs, never hang them
            error = _errors.InternalError(f"the manager thread stopped on {exc!r}")
            error.__cause__ = exc
            with self._state_lock:
                self._broken = error  # from now on a call raises it at once
            self._fail_all(error)
        finally:
            if self._collector_held:
                self._collector_held = False
                collector.release()
            self._shutdown_workers()
            if self.recorder is not None:
                self.recorder.ended = time.monotonic()
            with self._state_lock:
                self._state = _DONE
                self._selector.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                # Calls submitted while the workers were being stopped: nobody will run them.
                # (submit() appends under this lock and checks _DONE, so none comes after.)
                left = [c for c in self._commands if isinstance(c, Submit)]
                self._commands.clear()
            for command in left:
                command.job.fail(_errors.PoolClosedError("the pool stopped before this call ran"))
            _live_managers.discard(self)

    def _loop(self) -> None:
        while True:
            self._take_commands()
            self._relieve_collector()
            state = self._state
            if state == _TERMINATING:
                self._fail_all(_errors.PoolClosedError("the pool was terminated"))
                return
            now = time.monotonic()
            self._release_retries(now)
            self._enforce_deadlines(now)
            self._dispatch(now)
            self._release_idle_segments(now)
            if state == _CLOSING and not self._jobs:
                self._stop_idle_workers()
                if not self._handles:
                    return
            self._push()
            timeout = self._next_timer(now)
            for key, _ in self._selector.select(timeout):
                kind, handle = key.data
                if handle is None:  # the wake pipe
                    self._drain_wake()
                elif handle.slot not in self._handles or self._handles[handle.slot] is not handle:
                    continue  # an event of a worker already gone
                elif kind == "result":
                    self._read_result(handle)
                elif kind == "write":
                    self._flush(handle)
                else:
                    self._worker_exited(handle)

    def _relieve_collector(self) -> None:
        """Raise the collector's threshold while many calls are pending, put it back once none
        is (collector.py says why that pays and why it is safe)."""
        if self._collector_held:
            if not self._jobs:
                self._collector_held = False
                collector.release()
        elif len(self._jobs) >= collector.PENDING_CALLS:
            self._collector_held = True
            collector.hold()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        # Cleared only once the pipe is empty (callers write only while it is clear, so no byte
        # can be swallowed unseen), and before the commands are taken at the top of the loop: a
        # command added while it was still set is taken there all the same.
        self._wake_pending = False

    def _take_commands(self) -> None:
        while self._commands:
            command = self._commands.popleft()
            if isinstance(command, Submit):
                job = command.job
                if isinstance(job, Call):
                    self._jobs.add(job)
                    self._feedable.append(job)
                    self._queued.add(job)
                    continue
                known = self._function_costs.get(job.fn_id)
                if known is not None and job.sizer.cost is None:
                    job.sizer.cost = known  # apply_async in a loop: the cost is known already
                job.retrying = self._retrying
                if self.recorder is not None:
                    job.recorder = self.recorder
                    self.recorder.call_started(job.record)
                self._jobs.add(job)
                self._feedable.append(job)
                self._queued.add(job)
                self._settle(job)  # an empty input
            elif isinstance(command, Cancel):
                command.job.fail(command.error)
                if isinstance(command.job, Job):
                    if command.stop_running:
                        self._stop_running(command.job)
                    self._settle(command.job)
                else:
                    self._jobs.discard(command.job)
            else:
                self._forget_function(command.fn_id)

    def _stop_running(self, job: Job) -> None:
        """Kill the workers now running an item of ``job`` (its caller gave up on it, as a
        cluster call's Ctrl-C does on a Dask worker's local pool); the death is handled as
        any: the pool replaces them, and other jobs' chunks queued behind them run again."""
        for handle in self._handles.values():
            if not handle.messages:
                continue
            running = itertools.islice(handle.in_flight, handle.messages[0][0])
            # A tiny call's light chunk has no job until one is asked for (jobs.CallChunk), and
            # is never the stopped job's: do not make one just to compare.
            if any(not _light(chunk) and chunk.job is job for chunk in running):
                processes.kill(handle)

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        self._held_back = False
        if not self._feedable:
            self._take_back_for_idle(now)
            return
        in_flight = sum(len(h.messages) for h in self._handles.values())
        available = self._available_memory(now) if self.memory_reserve is not None else None
        # One message per worker per round, idlest first: every idle worker gets work before any
        # worker gets a second message queued (two items that wait for each other, as at a
        # barrier, must not end up in one worker's pipe while the other worker idles).
        sent = True
        while sent and self._feedable:
            sent = False
            for handle in sorted(self._handles.values(), key=lambda h: len(h.messages)):
                queued = self._queued_seconds(handle)
                room = self._has_room(handle, queued)
                heavy_room = (not room and self._heavy_head()
                              and self._has_room(handle, queued, heavy_tail=True))
                if not room and not heavy_room:
                    continue
                if not admit(in_flight, available, self.memory_reserve):
                    self._held_back = True  # rechecked on a short timer, see _next_timer
                    return
                if self._take_back(handle, now, idle_after_round=False):
                    sent = True  # a chunk cut earlier goes before new input (input order)
                    continue
                chunk = self._next_chunk_for(handle, queued, room, heavy_room)
                if chunk is None:
                    continue
                batch = self._gather(handle, chunk, queued)
                if len(batch) == 1 and not _light(chunk):
                    if not self._send(handle, chunk, now):
                        continue
                else:
                    self._send_batch(handle, batch, now)
                in_flight += 1
                sent = True
        self._take_back_for_idle(now)
        self._prepare_ahead()

    # -- taking a queued chunk back ------------------------------------------------------
    #
    # A chunk sent to a busy worker waits in its pipe behind the running one. If it may be
    # taken back (``Chunk.claim``), its claim id went to the worker's claim pipe first, and
    # exactly one of two readers gets that id: the worker, which then runs the chunk, or the
    # manager here, which then sends the chunk to another worker (worker_main.Claims skips it).
    # When that is worth it is scheduler.may_take_back's decision; tests/_simulation.py plays
    # the same rule.

    def _take_back_for_idle(self, now: float) -> None:
        """Give a worker left idle by the dispatch round a chunk waiting in another's pipe."""
        if not self._claims_out:
            return
        for handle in list(self._handles.values()):
            if not handle.messages and self._has_room(handle, 0.0):
                self._take_back(handle, now, idle_after_round=True)

    def _take_back(self, taker: WorkerHandle, now: float, *, idle_after_round: bool) -> bool:
        """Move the oldest chunk waiting unstarted in another worker's pipe to ``taker``, where
        :func:`scheduler.may_take_back` says so; whether one moved."""
        if not self._claims_out:
            return False  # the common case, in O(1): nothing can be taken back
        if not taker.ready:
            return False  # still starting (spawn, an initializer): the chunk would wait there
        taker_late = bool(taker.messages) and overdue(now - taker.since, taker.messages[0][1])
        holder, latest = None, float("-inf")
        for other in self._handles.values():
            if other is taker or len(other.messages) < 2 or not other.claims:
                continue
            expected = other.messages[0][1]
            running_for = now - other.since
            if not may_take_back(holder_overdue=overdue(running_for, expected),
                                 taker_idle=not taker.messages, taker_overdue=taker_late,
                                 input_left=not idle_after_round):
                continue
            late = running_for - (expected or 0.0)
            if late > latest:
                holder, latest = other, late
        if holder is None:
            return False
        try:
            data = os.read(holder.claim_r.fileno(), 8)
        except OSError:  # mostly BlockingIOError: its worker started every chunk it could
            return False
        if len(data) != 8:
            return False
        chunk = holder.claims.pop(int.from_bytes(data, "little"), None)
        if chunk is None:  # cannot happen: every id in the pipe is a chunk still in claims
            raise _errors.InternalError("a claim id without its chunk")
        self._claims_out -= 1
        position = next(i for i, c in enumerate(holder.in_flight) if c is chunk)
        index = 0
        for message_index, (count, _) in enumerate(holder.messages):
            if index == position:
                del holder.messages[message_index]
                break
            index += count
        del holder.in_flight[position]
        chunk.claim = 0
        job = chunk.job
        job.returned(chunk)
        self.taken_back += 1
        if job.finished:  # failed or cancelled meanwhile: nobody wants it run
            self._settle(job)
        else:
            self._send(taker, chunk, now)
        return True

    def _prepare_ahead(self) -> None:
        """Cut and pack the next chunk while every worker is busy, so a worker that finishes
        gets it at once: for big arguments the packing costs as much as the work."""
        if self._feedable and isinstance(self._feedable[0], Call):
            return  # apply_async, submit: sent in batches, packed then
        job = self._head()
        if job is None:
            return
        if (
            job.finished
            or job.pending
            or job.total == 1  # apply_async, submit: sent in batches, packed then
            or not job.sizer.learned
            or not job.can_feed()
        ):
            return
        chunk = job.next_chunk()
        if chunk is None:
            self._settle(job)
            return
        try:
            packing = time.monotonic() if self.recorder is not None else 0.0
            chunk.payload, chunk.segments = shm.pack(chunk.items, reuse=self._segments)
            if self.recorder is not None:
                chunk.pack_seconds = time.monotonic() - packing
        except BaseException:  # an argument's own code runs here
            pass  # packed again when sent, where the failure is reported item by item
        job.pending.appendleft(chunk)

    def _available_memory(self, now: float) -> int | None:
        """The machine's available memory, read from /proc at most every recheck interval
        (reading it on every dispatch would put a file read on the hot path)."""
        if now >= self._memory_read_at + MEMORY_RECHECK_SECONDS:
            self._memory_available = processes.available_memory()[0]
            self._memory_read_at = now
        return self._memory_available

    def _has_room(self, handle: WorkerHandle, queued: float | None,
                  heavy_tail: bool = False) -> bool:
        lifespan_left = None
        if self.max_tasks_per_child is not None:
            queued_items = sum(len(c.items) for c in handle.in_flight)
            lifespan_left = self.max_tasks_per_child - handle.items_done - queued_items
        running = handle.in_flight[0] if handle.in_flight else None
        return has_room(
            chunks=len(handle.messages),
            queued_seconds=queued,
            running_timed=(running is not None and not _light(running)
                           and running.job.item_timeout is not None),
            lifespan_left=lifespan_left,
            accepting=not (handle.retiring or handle.stopping or handle.timed_out is not None),
            heavy_tail=heavy_tail,
        )

    @staticmethod
    def _queued_seconds(handle: WorkerHandle) -> float | None:
        """Seconds of work expected in ``handle``'s pipe; None while a message's cost is unknown
        (each message's expectation is the one it was sent with)."""
        expected = 0.0
        for _, seconds in handle.messages:
            if seconds is None:
                return None
            expected += seconds
        return expected

    def _learn(self, job: Job) -> None:
        """A job queued before its function's cost was known takes it now (apply_async in a
        loop: the first answer teaches every call queued behind it)."""
        if job.sizer.cost is None:
            known = self._function_costs.get(job.fn_id)
            if known is not None:
                job.sizer.cost = known

    def _heavy_head(self) -> bool:
        """Whether the job at the head of the queue is a heavy-tailed map (only then is a busy
        worker without room by the horizon worth offering its heavy tail's one chunk)."""
        head = self._feedable[0] if self._feedable else None
        return isinstance(head, Job) and head.sizer.peak > head.sizer.target_seconds

    @staticmethod
    def _remaining(job: Job) -> int | None:
        if job.total is None:
            return None
        return job.total - job.next_index + sum(len(c.items) for c in job.pending)

    def _may_queue(self, job: Job, room: bool, heavy_room: bool,
                   handle: WorkerHandle) -> bool:
        """Whether ``job``'s next chunk may wait behind ``handle``'s work, where the worker
        has ``room`` (the prefetch horizon) or ``heavy_room`` (a heavy tail's one chunk)."""
        timed = job.item_timeout is not None
        if job.total == 1:
            tiny = batchable(items=1, cost=job.sizer.cost, timed=timed, isolated=False)
            return room and may_queue(learned=job.sizer.learned, timed=timed, tail=True,
                                      tiny_call=tiny)
        remaining = self._remaining(job)
        if not (heavy_room if job.sizer.in_heavy_tail(remaining) else room):
            return False
        take_back = (self._take_back_on and job.fn_id in handle.known_functions
                     and not handle.forget)
        return may_queue(learned=job.sizer.learned, timed=timed,
                         tail=job.sizer.idle_only(remaining, take_back=take_back))

    def _head(self) -> Job | None:
        """The job at the head of the queue; a waiting one-item Call becomes its Job here."""
        while self._feedable:
            head = self._feedable[0]
            if isinstance(head, Job):
                return head
            self._queued.discard(head)
            self._jobs.discard(head)
            if head.finished:  # failed while it waited (cancelled, the pool stopping)
                self._feedable.popleft()
                continue
            try:
                job = head.job()
            except BaseException as exc:  # an engine bug must fail this call, not the pool
                self._feedable.popleft()
                error = _errors.InternalError(f"starting this call raised {exc!r}")
                error.__cause__ = exc
                head.fail(error)
                continue
            job.retrying = self._retrying
            if self.recorder is not None:
                job.recorder = self.recorder
                self.recorder.call_started(job.record)
            self._feedable[0] = job
            self._queued.add(job)
            self._jobs.add(job)
            return job
        return None

    def _pop_feedable(self) -> None:
        self._queued.discard(self._feedable.popleft())

    def _next_chunk_for(self, handle: WorkerHandle, queued: float | None, room: bool = True,
                        heavy_room: bool = False) -> Chunk | None:
        # Whether anything may wait in this worker's pipe behind its current work is mostly a
        # property of the worker: decide it once, not once per waiting job.
        busy = bool(handle.messages)
        if busy and queued is None:
            return None  # a probe (cost unknown) runs alone: one per worker
        budget = prefetch_budget(queued) if busy and queued is not None else None
        skipped = 0  # jobs passed over for now
        while self._feedable and skipped < min(len(self._feedable), DISPATCH_SCAN_JOBS):
            head = self._feedable[0]
            if isinstance(head, Call):
                cost = self._light_cost(head)
                if cost is not None and busy and not room:
                    self._feedable.rotate(-1)  # tiny calls wait only within the horizon
                    skipped += 1
                    continue
                if cost is not None:  # a tiny call: it goes as it is (see jobs.CallChunk)
                    light = self._take_call(head, cost)
                    if light is not None:
                        return light
                    continue
            job = self._head()
            if job is None:
                break
            if job.finished or (job.exhausted and not job.pending):
                self._pop_feedable()
                self._settle(job)
                continue
            self._learn(job)
            if not job.can_feed() or (busy and not self._may_queue(job, room, heavy_room,
                                                                    handle)):
                # back-pressured (the caller has not taken its results), or not allowed to
                # wait behind a busy worker's work (scheduler.may_queue says when)
                self._feedable.rotate(-1)
                skipped += 1
                continue
            chunk = job.next_chunk(budget)
            if chunk is not None:
                return chunk
            self._settle(job)  # a cancelled future, or an input that just ran out
        return None

    def _chunk_seconds(self, chunk: Chunk) -> float | None:
        if _light(chunk):
            return chunk.cost  # type: ignore[attr-defined]
        cost = chunk.job.sizer.cost
        return None if cost is None else cost * len(chunk.items)

    def _batchable(self, chunk: Chunk) -> bool:
        if _light(chunk):
            return True  # _light_cost said so when it was taken
        job = chunk.job
        return (
            job.total == 1
            and chunk.payload is None
            and batchable(items=len(chunk.items), cost=job.sizer.cost,
                          timed=job.item_timeout is not None, isolated=chunk.isolated)
        )

    def _gather(self, handle: WorkerHandle, first: Chunk, queued: float | None) -> list[Chunk]:
        """``first`` plus the single-item jobs queued right after it, when they are tiny enough
        that sharing one message pays (see ``scheduler.batchable``); each keeps its own job."""
        if not self._batchable(first):
            return [first]
        lifespan_left = None
        if self.max_tasks_per_child is not None:
            queued_items = sum(len(c.items) for c in handle.in_flight)
            lifespan_left = self.max_tasks_per_child - handle.items_done - queued_items
        limit = batch_limit(waiting=len(self._feedable) + 1, workers=self.workers,
                            lifespan_left=lifespan_left)
        seconds_left = (
            prefetch_budget(queued) if handle.messages and queued is not None else float("inf")
        )
        batch = [first]
        seconds = self._chunk_seconds(first) or 0.0
        if not _light(first):
            self._drop_sent(first.job)
        while len(batch) < limit and self._feedable:
            head = self._feedable[0]
            if isinstance(head, Call):
                cost = self._light_cost(head)
                if cost is not None:
                    if seconds + cost > seconds_left:
                        break
                    light = self._take_call(head, cost)
                    if light is not None:
                        batch.append(light)
                        seconds += cost
                    continue
            job = self._head()
            if job is None:
                break
            if job.finished or (job.exhausted and not job.pending):
                self._pop_feedable()
                self._settle(job)
                continue
            if job.total != 1 or not job.can_feed():
                break  # consecutive jobs only: order among the waiting jobs is kept
            self._learn(job)
            chunk = job.next_chunk()
            if chunk is None:  # a cancelled future
                self._pop_feedable()
                self._settle(job)
                continue
            cost = self._chunk_seconds(chunk)
            if not self._batchable(chunk) or cost is None or seconds + cost > seconds_left:
                job.pending.appendleft(chunk)
                break
            batch.append(chunk)
            seconds += cost
            self._drop_sent(job)
        return batch

    def _light_cost(self, call: Call) -> float | None:
        """The learned cost of ``call``'s function if the call may be sent without a job (see
        jobs.CallChunk): untimed, and tiny enough to be batched; None otherwise."""
        if not call.fn_cached or call.options.item_timeout is not None:
            return None
        cost = self._function_costs.get(call.fn_id)
        if not batchable(items=1, cost=cost, timed=False, isolated=False):
            return None
        return cost

    def _take_call(self, call: Call, cost: float) -> CallChunk | None:
        """Take ``call`` off the head of the queue as a :class:`CallChunk` to send; None when
        it needs no sending (it failed while it waited, or its future was cancelled)."""
        self._pop_feedable()
        if call.finished:
            self._jobs.discard(call)
            return None
        if call.on_dispatch is not None and not call.on_dispatch():
            # A future cancelled before it started: it counts as done, nothing runs.
            self._jobs.discard(call)
            call.finished = True
            try:
                call.sink.finish([])
            except BaseException as exc:
                self._call_broke(call, exc)
            return None
        return CallChunk(call, cost, self._adopt)

    def _adopt(self, chunk: CallChunk) -> Job:
        """The job a :class:`CallChunk`'s call becomes when it leaves the light way (an error,
        a crash, an answer that will not unpickle): its one item already cut, and in flight
        while the chunk is."""
        call = chunk.call
        job = call.job()
        job.next_index = 1
        job.exhausted = True
        if chunk.on_the_way:
            job.in_flight = 1
            job.in_flight_items = 1
        job.retrying = self._retrying
        if self.recorder is not None:
            job.recorder = self.recorder
            self.recorder.call_started(job.record)
        self._jobs.discard(call)
        if call.finished:  # failed meanwhile (the pool stopping): nothing more to do for it
            job.finished = True
        else:
            self._jobs.add(job)
        return job

    def _settle_call(self, handle: WorkerHandle, chunk: CallChunk, value: Any, seconds: float,
                     started: float, load: float, cpu: float, rss: int, now: float) -> None:
        """A tiny call's part of a batch succeeded: settle it on its sink, no job needed."""
        call = chunk.call
        self._jobs.discard(call)
        if call.finished:
            return  # failed while it ran (the pool stopping, cancelled)
        call.finished = True
        known = self._function_costs.get(call.fn_id)
        if known is not None:  # what a job's sizer would have learned, without the job
            self._function_costs[call.fn_id] = known + COST_SMOOTHING * (seconds - known)
        record = CallRecord(next(Job._ids), call.function, call.workers)
        record.created = chunk.sent_at
        call.sink.record = record
        if self.recorder is not None:
            self.recorder.call_started(record)
            end = started + seconds
            self.recorder.chunk(record, Span(
                handle.slot, record.job, started, end, 1, seconds, load, max(0.0, now - end), 1,
                rss, cpu,
            ), 0.0)
        record.ended = now
        try:
            call.sink.deliver([value])
            call.sink.finish([])
        except BaseException as exc:
            self._call_broke(call, exc)

    @staticmethod
    def _call_broke(call: Call, exc: BaseException) -> None:
        """Settling ``call`` raised: fail that call alone (see _job_broke)."""
        error = _errors.InternalError(f"handling the result of this call raised {exc!r}")
        error.__cause__ = exc
        try:
            call.sink.fail(error)
        except BaseException:
            pass
        call.finished = True

    def _drop_sent(self, job: Job) -> None:
        """Take ``job`` off the head of the queue once its last chunk is cut (it is not finished:
        the chunk is about to be sent, so it must not be settled as empty)."""
        if self._feedable and self._feedable[0] is job and job.exhausted and not job.pending:
            self._pop_feedable()

    def _requeued(self, job: Job) -> None:
        if job not in self._queued:
            self._feedable.appendleft(job)
            self._queued.add(job)

    def _send(self, handle: WorkerHandle, chunk: Chunk, now: float) -> bool:
        """Send ``chunk`` to ``handle``; False if it went back to its job instead (see below)."""
        job = chunk.job
        if chunk.payload is None:
            try:
                # Big buffers (numpy arrays, bytes) go through shared memory, not the pipe.
                packing = time.monotonic() if self.recorder is not None else 0.0
                chunk.payload, chunk.segments = shm.pack(chunk.items, reuse=self._segments)
                if self.recorder is not None:
                    chunk.pack_seconds = time.monotonic() - packing
            except BaseException:  # an argument's __reduce__ may raise anything
                self._unpicklable_items(chunk, now)
                return True
        if handle.messages and chunk.segments and self._heavy_end_after(job, chunk):
            # At a heavy tail's end a chunk waits behind a busy worker only if it can be taken
            # back (ChunkSizer.idle_only); one with shared-memory arguments cannot: it goes to
            # the next idle worker instead (packed already).
            job.pending.appendleft(chunk)
            self._requeued(job)
            return False
        fn_blob = None if job.fn_id in handle.known_functions else job.fn_blob
        forget = tuple(handle.forget)
        handle.forget.clear()
        message_id = next(self._chunk_ids)
        claim = 0
        if not handle.messages:
            handle.since = now  # it starts this one at once
        elif (self._take_back_on and fn_blob is None and not forget and not chunk.segments
              and job.item_timeout is None and job.sizer.peak > job.sizer.target_seconds):
            # It waits behind the worker's running work, in a heavy-tailed map (where what it
            # waits behind may run long), and needs nothing else from this message: it may be
            # taken back until the worker starts it (see _take_back).
            claim = message_id + 1
            try:
                os.write(handle.claim_w.fileno(), claim.to_bytes(8, "little"))
            except OSError:  # a full or broken claim pipe: it just cannot be taken back
                claim = 0
        message = RunChunk(
            message_id,
            job.fn_id,
            fn_blob,
            chunk.payload,
            job.mode,
            # Fail-fast without retries: the first error ends the job, so stop the chunk there.
            job.stops_at_first_error,
            forget,
            claim,
        )
        self._write(handle, serialization.dumps(message))
        chunk.claim = claim
        if claim:
            handle.claims[claim] = chunk
            self._claims_out += 1
        handle.known_functions.add(job.fn_id)
        handle.lent.update(chunk.segments)
        handle.in_flight.append(chunk)
        handle.messages.append((1, self._chunk_seconds(chunk)))
        job.sent(chunk, now)
        if not handle.ready:
            chunk.deadline = None  # its clock starts when the worker is ready (see Ready)
        return True

    def _heavy_end_after(self, job: Job, chunk: Chunk) -> bool:
        """Whether ``job`` is at its heavy tail's end, counting ``chunk`` (just cut) as left."""
        remaining = self._remaining(job)
        return remaining is not None and job.sizer.in_heavy_end(remaining + len(chunk.items))

    def _send_batch(self, handle: WorkerHandle, batch: list[Chunk], now: float) -> None:
        """Send single-item chunks of several jobs as one :class:`RunBatch`."""
        try:
            payload, segments = shm.pack([c.items[0] for c in batch], reuse=self._segments)
        except Exception:
            # Some argument does not pickle: each chunk goes its own way, where the culprit
            # fails alone and the others are sent again one by one.
            for chunk in reversed(batch):
                self._unpicklable_items(chunk, now)
            return
        batch[0].segments = segments  # released with the first chunk should the worker die
        parts = []
        functions = []
        for chunk in batch:
            if _light(chunk):
                assert isinstance(chunk, CallChunk)
                call = chunk.call
                fn_id, mode, blob = call.fn_id, call.mode, call.fn_blob
                chunk.on_the_way = True
                chunk.sent_at = now
            else:
                job = chunk.job
                fn_id, mode, blob = job.fn_id, job.mode, job.fn_blob
                job.sent(chunk, now)
                if not handle.ready:
                    chunk.deadline = None  # its clock starts when the worker is ready (Ready)
            parts.append((fn_id, mode))
            if fn_id not in handle.known_functions:
                handle.known_functions.add(fn_id)
                functions.append((fn_id, blob))
        forget = tuple(handle.forget)
        handle.forget.clear()
        if not handle.messages:
            handle.since = now
        message = RunBatch(next(self._chunk_ids), tuple(parts), tuple(functions), payload, forget)
        self._write(handle, serialization.dumps(message))
        handle.lent.update(segments)
        handle.in_flight.extend(batch)
        seconds = 0.0
        for chunk in batch:
            seconds += self._chunk_seconds(chunk) or 0.0
        handle.messages.append((len(batch), seconds))


    def _unpicklable_items(self, chunk: Chunk, now: float) -> None:
        """The chunk's items do not pickle: fail the culprits, send the others one by one."""
        job = chunk.job
        for offset in range(len(chunk.items) - 1, -1, -1):
            item = chunk.items[offset]
            try:
                payload = serialization.dumps([item])
            except BaseException as exc:
                hint = serialization.pickling_hint("the argument", item, exc)
                # An instance of the type pickling raised, as the standard pools raise it.
                error = _errors.keeping_type(exc, hint)
                job.item_failed(chunk.start + offset, item, error, job.policy.retries + 1, now,
                                infrastructure=False)
                if job.finished:
                    break
                continue
            del payload  # packed again when sent, so no shared memory waits in a queue
            job.pending.appendleft(
                Chunk(job, chunk.start + offset, [item], chunk.attempt, isolated=True))
        self._settle(job)

    # -- answers ---------------------------------------------------------------------------

    def _read_result(self, handle: WorkerHandle) -> None:
        """Handle the messages that have arrived from ``handle``, never blocking: a worker
        stalled in the middle of a message leaves its first part in the inbox, and the manager
        goes on with the other workers and every deadline."""
        messages, open_ = processes.read_messages(handle, self._read_scratch)
        if not open_:
            # The worker is dying; its sentinel will report it. Stop watching this pipe.
            self._unregister(handle.result_conn)
        for data in messages:
            if self._handles.get(handle.slot) is not handle:
                return  # it was let go while handling an earlier message (the pool broke)
            self._on_message(handle, data)

    def _on_message(self, handle: WorkerHandle, data: bytes) -> None:
        try:
            message = shm.unpack(data, no_import_wait=True)  # see _NoImportWaitUnpickler
        except BaseException as exc:  # a result's own code ran here, and may raise anything
            message = exc
        if isinstance(message, InitFailed):
            self._initializer_failed(handle, message)
            return
        if isinstance(message, Ready):
            # A timed item sent while the worker was starting runs from now: its start-up
            # (spawn, the initializer) is not the item's time.
            handle.ready = True
            now = time.monotonic()
            for chunk in handle.in_flight:
                if _light(chunk):
                    continue  # a tiny call's chunk is never timed (reading .job would adopt it)
                if chunk.job.item_timeout is not None and chunk.deadline is None:
                    chunk.deadline = now + chunk.job.item_timeout
            return
        if isinstance(message, Recycled):
            handle.lent.difference_update(message.names)
            handle.lent.difference_update(message.gone)
            self._segments.give(message.names)
            return
        if not handle.messages:
            return  # not an answer to a chunk (an InitFailed that would not unpickle)
        count, _ = handle.messages.popleft()
        chunks = [handle.in_flight.popleft() for _ in range(count)]
        now = time.monotonic()
        handle.since = now  # the next message in its pipe started about when this answer left
        for chunk in chunks:
            if chunk.claim:  # its worker read its claim id and ran it
                if handle.claims.pop(chunk.claim, None) is not None:
                    self._claims_out -= 1
                chunk.claim = 0
        # (part, chunk) of the answer that go the general way, through their jobs.
        parts: list[tuple[int, Chunk]] = list(enumerate(chunks))
        if isinstance(message, BatchDone) and message.load_error is None:
            try:
                parts = self._settle_calls(handle, parts, message, now)
            except BaseException:  # a malformed answer: the general way reports it
                pass
        for _, chunk in parts:
            chunk.job.returned(chunk)
        answers: list[tuple[Chunk, Any]]
        if isinstance(message, BatchDone):
            try:
                answers = self._split_batch(handle, parts, message)
            except BaseException as exc:
                answers = []
                for _, chunk in parts:
                    self._job_broke(chunk.job, exc)
        elif isinstance(message, BaseException) and len(chunks) > 1:
            # A batch's answer would not unpickle: one of its results is odd, but which? Each
            # part runs again alone (as after a crash), so only the odd one fails.
            answers = []
            for chunk in reversed(chunks):
                if not chunk.job.finished:
                    chunk.job.isolate(chunk)
        else:
            answers = [(chunks[0], message)]
            chunks[0].job.note_answer_bytes(  # for the memory bound of ordered imap
                len(data) + shm.segment_bytes(data), len(chunks[0].items)
            )
        for chunk, answer in answers:
            try:
                self._answered(handle, chunk, answer, now)
            except BaseException as exc:
                self._job_broke(chunk.job, exc)
        for _, chunk in parts:
            self._settle(chunk.job)
        if not handle.retiring and should_recycle(
            handle.items_done, self.max_tasks_per_child, handle.last_rss, self.max_memory
        ):
            handle.retiring = True
            if self.recorder is not None:
                reason = _recycle_reason(handle, self.max_tasks_per_child, self.max_memory)
                last = chunks[-1]
                record = None if _light(last) else last.job.record
                self.recorder.incident("recycle", handle.slot, record, reason)
        if handle.retiring and not handle.in_flight and not handle.stopping:
            self._send_stop(handle)

    def _settle_calls(
        self, handle: WorkerHandle, parts: list[tuple[int, Chunk]], message: BatchDone,
        now: float,
    ) -> list[tuple[int, Chunk]]:
        """Settle the parts of a batch's answer that are tiny calls sent without a job and
        succeeded (jobs.CallChunk); the others, which go the general way."""
        failed = {err.offset for err in message.errors}
        share = 1 / max(1, len(message.seconds))
        load, cpu = message.load_seconds * share, message.cpu_seconds * share
        started = message.started  # the parts ran one after another from here
        rest = []
        settled = 0
        for part, chunk in parts:
            seconds = message.seconds[part]
            if _light(chunk) and part not in failed:
                assert isinstance(chunk, CallChunk)
                self._settle_call(handle, chunk, message.values[part], seconds, started, load,
                                  cpu, message.rss, now)
                settled += 1
            else:
                rest.append((part, chunk))
            started += seconds
        if settled:
            self._crashes_in_a_row = 0
            handle.items_done += settled
            handle.last_rss = message.rss
        return rest

    @staticmethod
    def _split_batch(
        handle: WorkerHandle, parts: list[tuple[int, Chunk]], message: BatchDone
    ) -> list[tuple[Chunk, Any]]:
        """One ChunkDone per ``(part, chunk)`` of a batch's answer, so each job takes its own."""
        handle.last_rss = message.rss
        if not parts:
            return []
        if message.load_error is not None:
            for _, chunk in reversed(parts):  # each alone, where its own error is reported
                if not chunk.job.finished:
                    chunk.job.isolate(chunk)
            return []
        errors: dict[int, tuple[TaskError, ...]] = {}
        for err in message.errors:
            errors[err.offset] = (TaskError(0, err.error, err.traceback),)
        # the parts ran one after another from message.started
        starts = list(itertools.accumulate(message.seconds, initial=message.started))
        share = 1 / max(1, len(message.seconds))
        load, cpu = message.load_seconds * share, message.cpu_seconds * share
        answers: list[tuple[Chunk, Any]] = []
        for part, chunk in parts:
            answers.append((chunk, ChunkDone(
                message.batch_id, [message.values[part]], errors.get(part, ()), 1,
                message.seconds[part], message.rss, None, starts[part], load, cpu,
            )))
        return answers

    def _answered(self, handle: WorkerHandle, chunk: Chunk, message: Any, now: float) -> None:
        """Take a worker's answer for ``chunk`` (alone, or one part of a batch) into its job."""
        job = chunk.job
        if isinstance(message, BaseException):
            # The answer itself would not unpickle here (a result class missing in the parent).
            for offset, item in enumerate(chunk.items):
                error: BaseException = _errors.ResultPicklingError(
                    f"the results of items {chunk.start}..{chunk.start + len(chunk.items) - 1} "
                    f"could not be unpickled in the parent: {message!r}. Return plain data, or "
                    "types importable in the parent."
                )
                job.item_failed(chunk.start + offset, item, error, job.policy.retries + 1, now,
                                infrastructure=False)
                if job.finished:
                    break
            return
        assert isinstance(message, ChunkDone)
        self._crashes_in_a_row = 0
        handle.items_done += message.ran
        handle.last_rss = message.rss
        if self.recorder is not None and message.started:
            end = message.started + message.seconds
            self.recorder.chunk(job.record, Span(
                handle.slot, job.id, message.started, end, message.ran, message.seconds,
                message.load_seconds, max(0.0, now - end), 1, message.rss, message.cpu_seconds,
            ), chunk.pack_seconds)
        if message.ran:
            job.sizer.observe(message.ran, message.seconds)
            if job.fn_cached and job.sizer.cost is not None:
                self._function_costs[job.fn_id] = job.sizer.cost
        if message.load_error is not None:
            if len(chunk.items) > 1:
                job.isolate(chunk)
            else:
                err = message.load_error
                error = attach_traceback(err.error, err.traceback, chunk.start,
                                         chunk.items[0], handle.label)
                job.item_failed(chunk.start, chunk.items[0], error, job.policy.retries + 1,
                                now, infrastructure=False)
        else:
            job.complete(chunk, message.values, message.errors, handle.label, now)

    @staticmethod
    def _job_broke(job: Job, exc: BaseException) -> None:
        """Handling ``job`` raised: fail that call alone, so nothing one call brings (an odd
        exception, a result's code, a sink) can stop the manager and every other call."""
        error = _errors.InternalError(f"handling a result of this call raised {exc!r}")
        error.__cause__ = exc
        try:
            job.fail(error)
        except BaseException:
            job.finished = True  # its sink is broken too: at least let the manager go on

    def _settle(self, job: Job) -> None:
        """After anything happened to ``job``: put it back in line if it has chunks to send
        again, and let it go if it is finished (the one place a job leaves the manager)."""
        if job.finished or job.maybe_finish():
            if job in self._jobs:
                self._jobs.discard(job)
                if not job.fn_cached:  # a lambda made for this call: no later job uses its id
                    self._forget_function(job.fn_id)
        elif job.pending:
            self._requeued(job)

    def _forget_function(self, fn_id: int) -> None:
        """Workers may drop a function no job will send again (told with their next chunk)."""
        self._function_costs.pop(fn_id, None)
        for handle in self._handles.values():
            if fn_id in handle.known_functions:
                handle.known_functions.discard(fn_id)
                handle.forget.append(fn_id)

    def _initializer_failed(self, handle: WorkerHandle, message: InitFailed) -> None:
        error = message.error
        if message.traceback and error.__cause__ is None:
            error.__cause__ = _errors.remote_traceback(message.traceback)
        add_note(error, f"allcores: the pool's initializer failed in {handle.label}")
        self._broken = error
        self._fail_all(error)

    # -- deaths ----------------------------------------------------------------------------

    def _worker_exited(self, handle: WorkerHandle) -> None:
        # Results it wrote before dying are still in the pipe: take them first. (A message it
        # was cut off in the middle of stays incomplete, and goes with the handle.)
        self._read_result(handle)
        if self._handles.get(handle.slot) is not handle:
            return
        exitcode = processes.exit_code(handle)
        if handle.pid is not None:
            shm.sweep(handle.pid)  # results it packed but never sent
        shm.discard(handle.lent)  # argument segments it held and cannot give back now
        self._unregister(handle.result_conn)
        self._unregister(handle.sentinel)
        if handle.write_waiting:
            self._unregister(handle.task_conn)
        handle.outbox.clear()
        self._unpushed.discard(handle)
        del self._handles[handle.slot]
        self._claims_out -= len(handle.claims)  # its claim pipe goes with it
        handle.claims.clear()
        now = time.monotonic()
        expected = handle.stopping and not handle.in_flight and exitcode == 0
        if not expected and handle.in_flight:
            self._crashes_in_a_row += 1
            self._blame(handle, exitcode, now)
        processes.close_handle(handle)
        if self._state == _RUNNING or (self._state == _CLOSING and self._jobs):
            if self._crashes_in_a_row > MAX_CRASHES_IN_A_ROW:
                self._fail_all(_errors.WorkerCrashedError(
                    f"{self._crashes_in_a_row} workers died in a row without finishing any "
                    "work; giving up. The last one: "
                    f"{describe_exit(exitcode)[1]}",
                    worker_id=handle.slot, pid=handle.pid, exitcode=exitcode,
                ))
                return
            try:
                self._start_worker(handle.slot)
            except Exception as exc:
                # The first workers started, so this is rare (a manager proxy in initargs whose
                # manager has gone away, no more processes): the pool cannot go on.
                error = _errors.start_error(exc)
                self._broken = error
                self._fail_all(error)

    def _blame(self, handle: WorkerHandle, exitcode: int | None, now: float) -> None:
        count, _ = handle.messages.popleft()
        running = [handle.in_flight.popleft() for _ in range(count)]
        for queued in reversed(handle.in_flight):  # never started: send again as they were
            queued.job.returned(queued)
            queued.job.requeue(queued)
            self._settle(queued.job)
        handle.in_flight.clear()
        handle.messages.clear()
        for chunk in running:
            chunk.job.returned(chunk)
            release(chunk)  # it may have died before mapping the chunk's shared memory
        first = running[0]
        job = first.job
        verdict = blame(items=len(first.items), parts=count, timed_out=handle.timed_out is first)
        if verdict == Verdict.ISOLATE:
            self._note(handle, "crash", job,
                       f"{handle.label} died ({describe_exit(exitcode)[1]}) running "
                       f"{sum(len(c.items) for c in running)} items; they are re-run one by one")
            # Which item killed it? Each runs again alone (never batched) to find out.
            for chunk in reversed(running):
                if not chunk.job.finished:
                    chunk.job.isolate(chunk)
        elif verdict == Verdict.TIMEOUT:
            item = first.items[0]
            error: BaseException = _errors.TaskTimeoutError(
                f"item {first.start} = {serialization.item_repr(item)} ran longer than its "
                f"timeout of {job.item_timeout:g} s; {handle.label} was stopped and replaced"
            )
            self._note(handle, "timeout", job, str(error))
            job.item_failed(first.start, item, error, first.attempt, now, infrastructure=True)
        else:
            item = first.items[0]
            available, total = processes.available_memory()
            signal_name, cause = describe_exit(
                exitcode,
                last_rss_bytes=handle.last_rss,
                available_bytes=available,
                total_bytes=total,
            )
            error = _errors.WorkerCrashedError(
                f"{handle.label} died while running item {first.start} = "
                f"{serialization.item_repr(item)}: {cause}. The pool replaced the worker; "
                "the other items are not affected.",
                worker_id=handle.slot,
                pid=handle.pid,
                exitcode=exitcode,
                signal_name=signal_name,
                cause=cause,
                item_repr=serialization.item_repr(item),
            )
            self._note(handle, "crash", job, str(error))
            job.item_failed(first.start, item, error, first.attempt, now, infrastructure=True)
        for chunk in running:
            self._settle(chunk.job)

    def _note(self, handle: WorkerHandle, kind: str, job: Job, detail: str) -> None:
        if self.recorder is not None:
            self.recorder.incident(kind, handle.slot, job.record, detail)

    # -- timers ----------------------------------------------------------------------------

    def _enforce_deadlines(self, now: float) -> None:
        for handle in list(self._handles.values()):
            if handle.timed_out is None and handle.in_flight:
                chunk = handle.in_flight[0]
                if chunk.deadline is not None and chunk.deadline <= now:
                    handle.timed_out = chunk
                    # With it go the processes its task started (a forked helper would hold
                    # the worker's pipes, and live on). Its pidfd fires next; _blame reports.
                    processes.kill_with_descendants(handle)
                    if handle.pidfd is None:
                        # No pidfd: a helper may hold the sentinel open, so do not wait for
                        # it; a SIGKILLed process is reaped by waitpid within milliseconds.
                        handle.process.join()
                        self._worker_exited(handle)

    def _release_retries(self, now: float) -> None:
        for job in list(self._retrying):
            if not job.delayed or job.finished:
                self._retrying.discard(job)
            elif job.release_due(now):
                self._requeued(job)

    def _release_idle_segments(self, now: float) -> None:
        """Free recycled segments once the pool has been idle for a while."""
        if self._jobs or not len(self._segments):
            self._release_segments_at = None
        elif self._release_segments_at is None:
            self._release_segments_at = now + RECYCLE_IDLE_SECONDS
        elif now >= self._release_segments_at:
            self._segments.clear()
            self._release_segments_at = None

    def _next_timer(self, now: float) -> float | None:
        times = [
            h.in_flight[0].deadline
            for h in self._handles.values()
            if h.in_flight and h.in_flight[0].deadline is not None and h.timed_out is None
        ]
        times.extend(t for job in self._retrying for t, _ in job.delayed)
        if self._held_back:
            times.append(now + MEMORY_RECHECK_SECONDS)
        if self._release_segments_at is not None:
            times.append(self._release_segments_at)
        if not times:
            return None
        return max(0.0, min(times) - now)

    # -- workers ---------------------------------------------------------------------------

    def _start_worker(self, slot: int) -> None:
        inherited = [self._wake_r, self._wake_w]
        for other in self._handles.values():
            inherited.extend(other.parent_fds())
        try:
            selector_fd = self._selector.fileno()  # type: ignore[attr-defined]
            inherited.append(selector_fd)
        except (AttributeError, NotImplementedError):
            pass
        handle = processes.start_worker(self.context, slot, self.init, inherited)
        self._handles[slot] = handle
        if self.recorder is not None:
            self.recorder.incident("start", slot, None, f"{handle.label} started",
                                   also=[j.record for j in self._jobs if isinstance(j, Job)])
        self._selector.register(handle.result_conn, selectors.EVENT_READ, ("result", handle))
        self._selector.register(handle.sentinel, selectors.EVENT_READ, ("exit", handle))

    def _unregister(self, fileobj: Any) -> None:
        try:
            self._selector.unregister(fileobj)
        except (KeyError, ValueError, OSError):
            pass

    def _send_stop(self, handle: WorkerHandle) -> None:
        handle.stopping = True
        self._write(handle, serialization.dumps(Stop()))

    def _write(self, handle: WorkerHandle, payload: bytes) -> None:
        """Queue one message for ``handle``; :meth:`_push` sends what a round queued.

        Messages go out together, in one write per worker per loop round: each write to a
        waiting worker wakes it (a context switch of ~30 us), which for tiny tasks cost more than
        the tasks. The manager never blocks writing: what the pipe cannot take stays in the
        outbox until the pipe is writable again (a manager blocked on a worker that is itself
        blocked writing a big result back would deadlock).
        """
        handle.outbox += processes.frame(payload)
        self._unpushed.add(handle)

    def _push(self) -> None:
        for handle in self._unpushed:
            if not handle.write_waiting:
                self._flush(handle)
        self._unpushed.clear()

    def _flush(self, handle: WorkerHandle) -> None:
        try:
            written = os.write(handle.task_conn.fileno(), handle.outbox)
        except BlockingIOError:
            written = 0
        except OSError:
            written = len(handle.outbox)  # the worker is gone; its sentinel will say so
        del handle.outbox[:written]
        if handle.outbox and not handle.write_waiting:
            self._selector.register(handle.task_conn, selectors.EVENT_WRITE, ("write", handle))
            handle.write_waiting = True
        elif not handle.outbox and handle.write_waiting:
            self._unregister(handle.task_conn)
            handle.write_waiting = False

    def _stop_idle_workers(self) -> None:
        for handle in self._handles.values():
            if not handle.in_flight and not handle.stopping:
                handle.retiring = True
                self._send_stop(handle)

    def _shutdown_workers(self) -> None:
        """Stop every worker that is still there: SIGTERM, a short grace, then SIGKILL."""
        handles = list(self._handles.values())
        self._handles.clear()
        for handle in handles:
            if handle.process.exitcode is None:
                processes.kill(handle, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE
        for handle in handles:
            if processes.wait_exit(handle, max(0.0, deadline - time.monotonic())) is None:
                processes.kill(handle)
        self._segments.clear()
        for handle in handles:
            for chunk in handle.in_flight:
                release(chunk)
            if handle.pid is not None:
                shm.sweep(handle.pid)
            shm.discard(handle.lent)
            processes.close_handle(handle)

    def _fail_all(self, error: BaseException) -> None:
        for job in list(self._jobs):
            job.fail(error)
        self._jobs.clear()
        self._feedable.clear()
        self._queued.clear()
        while self._commands:
            command = self._commands.popleft()
            if isinstance(command, Submit):
                command.job.fail(error)


def _light(chunk: Chunk) -> bool:
    """Whether ``chunk`` is a tiny call on its way without a job (see jobs.CallChunk)."""
    return type(chunk) is CallChunk and not chunk.adopted


def _recycle_reason(handle: WorkerHandle, max_tasks: int | None, max_memory: int | None) -> str:
    if max_memory is not None and handle.last_rss is not None and handle.last_rss > max_memory:
        return (f"{handle.label} recycled: resident memory {handle.last_rss / 2**20:.0f} MiB "
                f"passed max_memory {max_memory / 2**20:.0f} MiB")
    return f"{handle.label} recycled after {handle.items_done} items (maxtasksperchild)"
