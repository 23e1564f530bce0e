"""The loop each worker process runs.

The main thread reads a chunk from the task pipe, runs it and writes the answer: no other thread
competes with the task for the GIL. (An earlier design drained the pipe in a reader thread; the
GIL hand-offs it forced cost ~5% of a pure-Python task's speed.) Deadlock-freedom comes from the
manager instead, which never blocks writing to a worker (see ``manager.py``).

A second thread, the lifeline, waits for one thing only: the task pipe hanging up, which happens
when the parent dies. It then exits the worker at once, even in the middle of a long task. It
polls for the hang-up alone (no data events), so it never wakes while the parent lives.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any

from allcores import errors as _errors
from allcores import worker as _worker
from allcores._engine import serialization, shm
from allcores._engine.messages import (
    CALL_ONE,
    CALL_STAR,
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

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident memory of this process, read cheaply from /proc (0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def _portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a stand-in that keeps its type and text.

    An exception class whose __init__ takes other arguments than it passes to super() pickles
    fine but fails to unpickle in the parent (CPython bpo-1692335), which would lose the whole
    chunk's results; catching that here keeps the failure to the one item.
    """
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        data = pickle.dumps(exc, serialization.PROTOCOL)
    except BaseException as pickling_error:
        # As multiprocessing.Pool: an exception that cannot be sent is a MaybeEncodingError
        # (ProcessPoolExecutor raises the pickling error itself: Executor takes ``original``).
        try:
            pickle.loads(pickle.dumps(pickling_error, serialization.PROTOCOL))
            original: BaseException | None = pickling_error
        except BaseException:
            original = None
        return _errors.ResultPicklingError(
            f"{name}: {exc} (the exception could not be pickled to reach the caller: "
            f"{pickling_error!r})",
            exc=repr(pickling_error),
            value=serialization.item_repr(exc),
            original=original,
        )
    try:
        pickle.loads(data)
        return exc
    except BaseException:
        return _errors.AllcoresError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
            "(the original exception could not be pickled to reach the caller)"
        )


def _task_error(offset: int, exc: BaseException) -> TaskError:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return TaskError(offset, _portable_error(exc), tb)


def _run(fn: Any, items: list, mode: int, stop_on_error: bool):
    values: list = []
    errors: list[TaskError] = []
    append = values.append
    it = iter(items)
    while True:
        try:
            # The happy path is a tight loop; an exception resumes it after the failed item.
            if mode == CALL_ONE:
                for item in it:
                    append(fn(item))
            elif mode == CALL_STAR:
                for args in it:
                    append(fn(*args))
            else:
                for args, kwargs in it:
                    append(fn(*args, **kwargs))
            break
        except BaseException as exc:
            errors.append(_task_error(len(values), exc))
            append(None)
            if stop_on_error:
                break
    return values, errors


def _unpicklable_values(values: list, errors: list[TaskError]) -> None:
    """Replace each value of ``values`` that cannot be pickled by None and an error in
    ``errors`` (at its offset), so only those items fail; ``errors`` ends sorted."""
    for offset, value in enumerate(values):
        try:
            serialization.dumps(value)
        except BaseException as exc:  # a __reduce__ may even raise SystemExit
            values[offset] = None
            hint = serialization.pickling_hint("the result", value, exc)
            err = _errors.ResultPicklingError(
                hint + " Return plain data from the task instead.",
                exc=repr(exc),
                value=serialization.item_repr(value),
                original=_portable_error(exc),
            )
            errors.append(TaskError(offset, err, ""))
    errors.sort(key=lambda e: e.offset)


def _encode_done(done: ChunkDone) -> bytes:
    try:
        return shm.pack(done)[0]  # big results (arrays) go through shared memory
    except BaseException:  # a __reduce__ may even raise SystemExit: that result fails alone
        pass
    # Some value cannot be pickled: find which, and fail only those items.
    values = list(done.values)
    errors = list(done.errors)
    _unpicklable_values(values, errors)
    fixed = ChunkDone(done.chunk_id, values, tuple(errors), done.ran, done.seconds, done.rss,
                      None, done.started, done.load_seconds, done.cpu_seconds)
    return shm.pack(fixed)[0]


def _encode_batch(done: BatchDone) -> bytes:
    """Like :func:`_encode_done`, for a batch: a value that cannot be pickled fails its part."""
    try:
        return shm.pack(done)[0]
    except BaseException:  # as for a chunk: the part whose value will not pickle fails alone
        pass
    values = list(done.values)
    errors = list(done.errors)
    _unpicklable_values(values, errors)
    fixed = BatchDone(done.batch_id, values, tuple(errors), done.seconds, done.rss, None,
                      done.started, done.load_seconds, done.cpu_seconds)
    return shm.pack(fixed)[0]


def _run_batch(msg: RunBatch, functions: dict[int, Any], kept: list) -> BatchDone:
    """Run each part of a batch with its own function; each part's error stays its own."""
    try:
        for fn_id, blob in msg.functions:
            functions[fn_id] = serialization.loads_function(blob)
        loading = time.monotonic()  # see worker_main: a function's first load is start-up
        items = shm.unpack(msg.items, keep=kept)
        fns = [functions[fn_id] for fn_id, _ in msg.parts]
        if len(items) != len(fns):
            raise _errors.InternalError(f"{len(items)} items for {len(fns)} parts")
    except BaseException as exc:
        err = _errors.ArgumentPicklingError(
            f"a batch's functions or arguments could not be unpickled in the worker: "
            f"{type(exc).__name__}: {exc}"
        )
        return BatchDone(msg.batch_id, [], (), (), rss_bytes(), _task_error(0, err))
    values: list = []
    errors: list[TaskError] = []
    seconds: list[float] = []
    perf_counter = time.perf_counter
    first = time.monotonic()  # the statistics' clock, see ChunkDone
    cpu = time.process_time()
    for part, ((_, mode), fn, item) in enumerate(zip(msg.parts, fns, items)):  # noqa: B905
        started = perf_counter()
        try:
            if mode == CALL_ONE:
                values.append(fn(item))
            elif mode == CALL_STAR:
                values.append(fn(*item))
            else:
                values.append(fn(*item[0], **item[1]))
        except BaseException as exc:
            values.append(None)
            errors.append(_task_error(part, exc))
        seconds.append(perf_counter() - started)
    _flush_queues()
    return BatchDone(msg.batch_id, values, tuple(errors), tuple(seconds), rss_bytes(), None,
                     first, first - loading, time.process_time() - cpu)


class Claims:
    """The worker's side of its claim pipe: may it run a chunk the manager may take back?

    For each such chunk the manager writes the chunk's claim id (8 bytes, one atomic write)
    to the claim pipe before the chunk itself; to take a chunk back it reads one id, always
    the oldest there, and sends that chunk to another worker. Each id reaches exactly one
    reader, so a chunk runs exactly once: here if this worker read its id, elsewhere if the
    manager did. An id later than the chunk's own means the manager took the chunk back
    (ids are increasing); it belongs to a later chunk and is kept for it.
    """

    def __init__(self, conn: Any) -> None:
        self._fd = None if conn is None else conn.fileno()
        self._held = 0  # an id read for a later chunk

    def take(self, claim: int) -> bool:
        """Whether this worker runs the chunk whose claim id is ``claim``."""
        while True:
            if self._held:
                if self._held == claim:
                    self._held = 0
                    return True
                if self._held > claim:
                    return False  # ours went to another worker
                self._held = 0  # (cannot happen: an id older than the chunk being started)
            if self._fd is None:
                return False
            try:
                data = os.read(self._fd, 8)
            except BlockingIOError:
                return False  # no id left: the manager took ours
            except InterruptedError:
                continue
            except OSError:
                return False
            if len(data) != 8:
                return False  # the manager is gone (end of file); the task pipe says so next
            self._held = int.from_bytes(data, "little")


def _lifeline(fd: int) -> None:
    """Exit the worker as soon as the manager's end of the task pipe is gone."""
    watcher = select.poll()
    watcher.register(fd, 0)  # no data events: only POLLHUP / POLLERR / POLLNVAL wake us
    while True:
        try:
            if watcher.poll():
                break
        except InterruptedError:
            continue
    os._exit(0)


def _give_back(kept: list, result_conn) -> None:
    """Tell the manager which argument segments this worker no longer views."""
    if kept:
        names = [name for name, _, _ in kept]
        free = shm.release_kept(kept)
        gone = tuple(name for name in names if name not in free)
        result_conn.send_bytes(serialization.dumps(Recycled(tuple(free), gone)))


def _flush_queues() -> None:
    """Push out items the tasks put on an allcores.Queue but that still wait in this worker's
    batch, so they are in the queue before the result that says the task is done."""
    queues = sys.modules.get("allcores.sync._queue")
    if queues is not None:
        queues.flush_pending()


def _going_idle() -> None:
    """Housekeeping while no work waits: let go of maps of shares their owner has closed."""
    shared = sys.modules.get("allcores.shared")
    if shared is not None:
        shared.forget_closed_maps()


def worker_main(
    worker_id: int,
    task_conn,
    result_conn,
    close_fds: list[int],
    initializer: Any = None,
    initargs: tuple = (),
    claim_conn: Any = None,
) -> None:
    """Entry point of a worker process (the target of its ``Process``)."""
    # Ctrl-C goes to the whole process group; the parent decides what stops, not each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in close_fds:  # pipe ends of sibling workers inherited through fork
        try:
            os.close(fd)
        except OSError:
            pass
    _worker._enter(worker_id, os.getpid())

    if initializer is not None:
        try:
            # Under fork the wrapper arrives as it was; under spawn/forkserver, as the function.
            serialization.unwrap(initializer)(*initargs)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            result_conn.send_bytes(serialization.dumps(InitFailed(_portable_error(exc), tb)))
            return
    result_conn.send_bytes(serialization.dumps(Ready()))  # timed items' clocks may start

    threading.Thread(target=_lifeline, args=(task_conn.fileno(),), daemon=True).start()
    functions: dict[int, Any] = {}
    claims = Claims(claim_conn)
    # The statistics compare this clock with the manager's: CLOCK_MONOTONIC is system-wide on
    # Linux (see _engine/recording.py), and as cheap to read as perf_counter.
    monotonic = time.monotonic
    process_time = time.process_time  # CPU time: below the wall time when the core is shared

    while True:
        if not task_conn.poll(0):
            _going_idle()
        try:
            data = task_conn.recv_bytes()
        except (EOFError, OSError):
            return  # the manager is gone: nobody to report to
        loading = 0.0
        msg = serialization.loads(data)
        del data
        if isinstance(msg, Stop):
            return
        if isinstance(msg, RunBatch):
            for fn_id in msg.forget:
                functions.pop(fn_id, None)
            kept_batch: list = []
            result_conn.send_bytes(_encode_batch(_run_batch(msg, functions, kept_batch)))
            del msg
            _give_back(kept_batch, result_conn)
            continue
        assert isinstance(msg, RunChunk)
        for fn_id in msg.forget:
            functions.pop(fn_id, None)
        if msg.claim and not claims.take(msg.claim):
            continue  # taken back: another worker runs it, and nobody waits for an answer here
        load_error = None
        items: list = []
        kept: list = []  # maps of recyclable argument segments, given back after the chunk
        fn = functions.get(msg.fn_id)
        try:
            if fn is None:
                if msg.fn_blob is None:
                    raise _errors.InternalError(f"unknown function {msg.fn_id}")
                fn = functions[msg.fn_id] = serialization.loads_function(msg.fn_blob)
            # Unpickling a function for the first time imports its modules (Pillow, pandas:
            # often 100 ms and more), a one-off start-up cost; the statistics count only the
            # arguments' unpickling as transfer, so the clock starts here.
            loading = monotonic()
            items = shm.unpack(msg.items, keep=kept)
        except BaseException as exc:
            err = _errors.ArgumentPicklingError(
                f"the task's function or arguments could not be unpickled in the worker: "
                f"{type(exc).__name__}: {exc}. Make sure their classes and modules are "
                "importable in the worker (define them in a module, not only in a notebook cell)."
            )
            load_error = _task_error(0, err)
        if load_error is not None:
            done = ChunkDone(msg.chunk_id, [], (), 0, 0.0, rss_bytes(), load_error)
            result_conn.send_bytes(serialization.dumps(done))
            _give_back(kept, result_conn)
            continue
        started = monotonic()
        cpu = process_time()
        values, errs = _run(fn, items, msg.mode, msg.stop_on_error)
        seconds = monotonic() - started
        cpu = process_time() - cpu
        _flush_queues()
        done = ChunkDone(msg.chunk_id, values, tuple(errs), len(values), seconds, rss_bytes(),
                         None, started, started - loading, cpu)
        result_conn.send_bytes(_encode_done(done))
        del items, values, errs, done
        _give_back(kept, result_conn)
