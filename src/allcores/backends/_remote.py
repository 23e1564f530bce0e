"""What runs on a cluster worker: one chunk of one call, answered as bytes.

Every function here runs inside a Dask or Ray worker process, so this module imports nothing
heavy and nothing from the engines. A chunk's answer is pickled here, by us, not by the engine:
a result that fails to pickle then fails only its own item (``ResultPicklingError``), as locally,
instead of the whole chunk failing inside the engine's serializer.

Two ways to run a chunk:

* :func:`run_inline` calls the function in the worker process itself (Ray). A crash kills the
  engine's worker; the driver sees it and re-runs the chunk item by item. A timeout is enforced
  by the driver, which cancels the task with force (the engine kills its process).
* :func:`run_isolated` hands the chunk to an allcores pool local to the worker (Dask). A crash or
  timeout then kills one local process, not the Dask worker: the local engine attributes it to
  the one item, replaces the process, and the chunk's other items keep their results.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import socket
import threading
from typing import Any, NamedTuple

from allcores import errors as _errors
from allcores._engine import serialization

# Loaded functions kept per worker process, by call id: a call's function is unpickled once per
# worker, not once per chunk. Bounded so a long-lived worker does not keep old calls' closures.
_FUNCTION_CACHE_SIZE = 16
_functions: collections.OrderedDict[str, Any] = collections.OrderedDict()
_functions_lock = threading.Lock()


def _function(call_id: str, fn_blob: bytes) -> Any:
    with _functions_lock:
        fn = _functions.get(call_id)
        if fn is not None:
            _functions.move_to_end(call_id)
            return fn
    fn = serialization.loads_function(fn_blob)
    with _functions_lock:
        _functions[call_id] = fn
        while len(_functions) > _FUNCTION_CACHE_SIZE:
            _functions.popitem(last=False)
    return fn


class ClusterShare:
    """What an ``allcores.SharedArray`` becomes on a cluster worker: the same ``.array`` (a
    read-only numpy array), read from the engine's store, where it was put once per call.

    A task written for ``handle.array[lo:hi]`` runs unchanged.
    """

    writable = False

    def __init__(self, array: Any) -> None:
        try:
            array.setflags(write=False)
        except ValueError:
            pass  # already read-only (Ray's zero-copy arrays are)
        self._array = array

    @property
    def array(self) -> Any:
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> Any:
        return self._array.dtype

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        return self._array if dtype is None else self._array.astype(dtype)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, key: Any) -> Any:
        return self._array[key]

    def close(self) -> None:
        """Nothing to free here: the store frees the array when the call ends."""

    def __enter__(self) -> ClusterShare:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __reduce__(self) -> Any:
        return (ClusterShare, (self._array,))


# The arrays of the shares of the chunk being loaded, by token (see _driver's pickler).
_loading = threading.local()


def shared_from_store(token: str) -> ClusterShare:
    """Unpickling hook of a share in a chunk's items: the array the call put in the store."""
    shares = getattr(_loading, "shares", None) or {}
    try:
        return ClusterShare(shares[token])
    except KeyError:
        raise _errors.InternalError(f"share {token} is missing from the task") from None


def _resolve(shares: dict[str, Any] | None) -> dict[str, Any]:
    """Dask hands a task its stored values; Ray hands nested references, fetched here."""
    if not shares:
        return {}
    out = {}
    for token, value in shares.items():
        if type(value).__name__ == "ObjectRef":
            import ray

            value = ray.get(value)
        out[token] = value
    return out


class Timing(NamedTuple):
    """When and how a chunk ran on its worker, for the driver's run statistics."""

    started: float  # the task function started, ``time.time()`` (0.0: it never ran)
    seconds: float  # in the task function(s), wall
    load: float  # unpickling the function and the items
    cpu: float  # CPU seconds the worker got while in the task function


NOT_RUN = Timing(0.0, 0.0, 0.0, 0.0)


def _answer(values: list, errors: list[tuple[int, BaseException, str, bool]], timing: Timing,
            where: str) -> bytes:
    """Pickle a chunk's answer ``(values, errors, timing, where)``; a value that does not
    pickle fails only its own item."""
    try:
        return serialization.dumps((values, errors, tuple(timing), where))
    except Exception:
        pass
    errors = list(errors)
    values = list(values)
    for offset, value in enumerate(values):
        try:
            serialization.dumps(value)
        except Exception as exc:
            values[offset] = None
            hint = serialization.pickling_hint("the result", value, exc)
            err = _errors.ResultPicklingError(hint + " Return plain data from the task instead.")
            errors.append((offset, err, "", False))
    errors.sort(key=lambda e: e[0])
    portable = [(o, _portable(e), tb, infra) for o, e, tb, infra in errors]
    return serialization.dumps((values, portable, tuple(timing), where))


def _portable(exc: BaseException) -> BaseException:
    from allcores._engine.worker_main import _portable_error

    return _portable_error(exc)


def _load(call_id: str, fn_blob: bytes, items_blob: bytes,
          shares: dict[str, Any] | None) -> tuple[Any, list]:
    fn = _function(call_id, fn_blob)
    _loading.shares = _resolve(shares)
    try:
        return fn, serialization.loads(items_blob)
    finally:
        _loading.shares = None


def _load_failed(exc: BaseException, where: str) -> bytes:
    import traceback

    err = _errors.ArgumentPicklingError(
        f"the task's function or arguments could not be unpickled on the cluster worker "
        f"{where}: {type(exc).__name__}: {exc}. Install the same packages on every worker and "
        "define the classes and functions you pass in importable modules."
    )
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # offset -1: the whole chunk failed to load; the driver re-runs it item by item.
    return serialization.dumps(([], [(-1, err, tb, False)], tuple(NOT_RUN), where))


def run_inline(call_id: str, fn_blob: bytes, items_blob: bytes, mode: int, where: str,
               shares: dict[str, Any] | None = None) -> bytes:
    """Run a chunk in this process (a Ray worker) and answer with its pickled outcome."""
    import time

    from allcores._engine.worker_main import _run

    where = where or f"{socket.gethostname()} pid {os.getpid()}"
    loading = time.perf_counter()
    try:
        fn, items = _load(call_id, fn_blob, items_blob, shares)
    except BaseException as exc:
        return _load_failed(exc, where)
    wall, cpu = time.time(), time.process_time()
    started = time.perf_counter()
    values, task_errors = _run(fn, items, mode, False)
    seconds = time.perf_counter() - started
    timing = Timing(wall, seconds, started - loading, time.process_time() - cpu)
    errors = [(e.offset, e.error, e.traceback, False) for e in task_errors]
    return _answer(values, errors, timing, where)


def run_inline_timed(call_id: str, fn_blob: bytes, items_blob: bytes, mode: int,
                     where: str, shares: dict[str, Any] | None = None) -> Any:
    """:func:`run_inline` as a generator that first yields when it started (wall clock).

    Ray streams the first value to the driver at once, so a timed item's clock starts when the
    item starts, not when the task was queued behind a worker's start-up.
    """
    import time

    yield time.time()
    yield run_inline(call_id, fn_blob, items_blob, mode, where, shares)


# -- isolated mode (Dask) -------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: Any = None
# call id -> this worker's local jobs of that call now running in the local pool.
_running: dict[str, list[Any]] = {}
# Calls stopped here (Ctrl-C, an early break): a chunk of theirs that Dask starts after the stop
# (it was already on its way when the driver cancelled) does not run. Bounded, oldest first out.
_ABORTED_KEPT = 256
_aborted: collections.OrderedDict[str, None] = collections.OrderedDict()


def _local_pool(processes: int) -> Any:
    """This worker process's allcores pool, started on first use (one per Dask worker)."""
    global _pool
    with _pool_lock:
        if _pool is not None and not _pool._engine.alive:
            _pool = None
        if _pool is None:
            from allcores._pool import Pool

            # Dask starts its workers as daemonic processes, and multiprocessing refuses to let
            # a daemonic process have children. The flag only asks multiprocessing to kill the
            # worker when the nanny exits; allcores' own processes exit by themselves when their
            # parent dies (the lifeline in worker_main), so lifting it loses nothing.
            multiprocessing.current_process()._config.pop("daemon", None)  # type: ignore[attr-defined]
            # forkserver: a Dask worker runs an event loop and several threads, and forking a
            # threaded process can deadlock the child on a lock held at the fork.
            _pool = Pool(processes, context="forkserver", memory_reserve=None, backend="processes")
        return _pool


def abort(call_id: str) -> bool:
    """Stop this worker's running chunks of ``call_id`` now (Ctrl-C or an early ``break``).

    Only that call's items stop: the local processes running them are killed and replaced,
    and the local pool, with any other call's chunks on it, goes on.
    """
    from concurrent.futures import CancelledError

    with _pool_lock:
        _aborted[call_id] = None
        while len(_aborted) > _ABORTED_KEPT:
            _aborted.popitem(last=False)
        jobs = _running.pop(call_id, [])
        pool = _pool
    if pool is None or not jobs:
        return False
    for job in jobs:
        pool._engine.abort(job, CancelledError())
    return True


def shutdown_local_pool() -> None:
    """Stop this worker's local pool (the Dask worker is closing)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.terminate()


class LostChunk(Exception):
    """The local pool was stopped under a chunk (its Dask worker is closing): run it again."""


def run_isolated(call_id: str, fn_blob: bytes, items_blob: bytes, mode: int,
                 timeout: float | None, start: int, processes: int, where: str,
                 shares: dict[str, Any] | None = None) -> bytes:
    """Run a chunk in this Dask worker's local allcores pool and answer with its outcome."""
    import time
    from concurrent.futures import CancelledError

    from allcores._engine.jobs import ListSink
    from allcores._engine.options import TaskOptions
    from allcores._pool import AsyncResult

    loading = time.perf_counter()
    try:
        fn, items = _load(call_id, fn_blob, items_blob, shares)
    except BaseException as exc:
        return _load_failed(exc, where)
    load = time.perf_counter() - loading
    pool = _local_pool(processes)
    options = TaskOptions(item_timeout=timeout, on_error="collect")
    sink = ListSink()
    wall = time.time()
    started = time.perf_counter()
    with _pool_lock:
        if call_id in _aborted:
            raise CancelledError(f"call {call_id} was stopped")
        # max_outstanding given: always a Job, never the engine's light one-item Call (which
        # becomes a Job of its own only when dispatched), so abort() finds its running items.
        job = pool._engine.start(fn, items, sink, mode=mode, options=options,
                                 max_outstanding=4 * processes)
        _running.setdefault(call_id, []).append(job)
    try:
        values = AsyncResult(sink).get()
    except _errors.PoolClosedError:
        raise LostChunk(f"the local pool on {where} was stopped under this chunk") from None
    finally:
        with _pool_lock:
            jobs = _running.get(call_id)
            if jobs is not None:
                jobs.remove(job)
                if not jobs:
                    del _running[call_id]
    # The local pool's own figures: time in the task function and the CPU it got, over the
    # local processes (the chunk's wall time would count the local pool's round trips as work).
    local = values.stats
    timing = Timing(wall, time.perf_counter() - started, load, 0.0) if local is None else (
        Timing(wall, local.busy_seconds, load, local.cpu_seconds))
    errors = []
    for failure in values.failures:
        offset = failure.index
        error = failure.error
        index = start + offset
        infrastructure = isinstance(error, (_errors.WorkerCrashedError, _errors.TaskTimeoutError))
        if isinstance(error, _errors.WorkerCrashedError):
            error = _errors.WorkerCrashedError(
                f"a process on {where} died while running item {index} = "
                f"{failure.item_repr}: {error.cause}. It was replaced; the other items are not "
                "affected.",
                pid=error.pid, exitcode=error.exitcode, signal_name=error.signal_name,
                cause=error.cause, item_repr=failure.item_repr,
            )
            tb = ""
        elif isinstance(error, _errors.TaskTimeoutError):
            error = _errors.TaskTimeoutError(
                f"item {index} = {failure.item_repr} ran longer than its timeout of "
                f"{timeout:g} s on {where}; its process was stopped and replaced"
            )
            tb = ""
        else:
            cause = error.__cause__
            tb = cause.tb if isinstance(cause, _errors.RemoteTraceback) else ""
            error.__cause__ = None
            notes = getattr(error, "__notes__", None)
            if notes:  # the local pool's note names the offset in the chunk, not the item
                error.__notes__ = [n for n in notes if not n.startswith("allcores: ")]
        values[offset] = None
        errors.append((offset, error, tb, infrastructure))
    return _answer(list(values), errors, timing, where)
