"""``allcores.Executor``: a drop-in for ``concurrent.futures.ProcessPoolExecutor``.

It returns the standard library's ``Future``, so ``as_completed``, ``wait`` and asyncio's
``loop.run_in_executor`` work as they do with the standard executor. A worker that dies fails
only the future of the item it ran (with ``WorkerCrashedError``, a ``BrokenProcessPool``); the
executor replaces the worker and stays usable.
"""

from __future__ import annotations

import os
import signal as _signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import TimeoutError as _FuturesTimeoutError
from concurrent.futures.process import _RemoteTraceback as _FuturesRemoteTraceback
from typing import Any

from allcores import backends as _backends
from allcores import errors as _errors
from allcores._engine.client import Engine, LocalEngine
from allcores._engine.jobs import IterSink, Raised, Sink
from allcores._engine.messages import CALL_ARGS, CALL_STAR
from allcores._engine.options import TaskOptions

__all__ = ["Executor"]


class _FutureSink(Sink):
    def __init__(self, future: Future) -> None:
        self.future = future

    def deliver(self, values: list) -> None:
        if values and not self.future.done():
            self.future.set_result(values[0])

    def finish(self, failures) -> None:
        pass  # the value arrived through deliver(); a cancelled future has nothing to set

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            if isinstance(error, CancelledError):
                self.future.cancel()
            else:
                self.future.set_exception(_as_executor_error(error))


def _as_executor_error(error: BaseException) -> BaseException:
    """The error as ProcessPoolExecutor raises it.

    A result that fails to pickle raises the pickling error's own type there (``Pool`` raises
    ``MaybeEncodingError``): our ``ResultPicklingError`` is already a ``TypeError`` and a
    ``PicklingError``; any other type (an ``AttributeError`` for a local object, whatever a
    ``__reduce__`` raised) is raised as itself, with our message as a note.
    """
    cause = error.__cause__
    if isinstance(cause, _errors.RemoteTraceback):
        # ProcessPoolExecutor's own class exactly (CPython's test_traceback checks the type).
        error.__cause__ = _FuturesRemoteTraceback(cause.tb)  # type: ignore[arg-type]
    original = getattr(error, "original", None)
    if (
        isinstance(error, _errors.ResultPicklingError)
        and original is not None
        and not isinstance(error, type(original))
    ):
        _errors.add_note(original, f"allcores: {error}")
        for note in getattr(error, "__notes__", ()):
            _errors.add_note(original, note)
        return original
    return error


class Executor(_StdExecutor):
    """A process pool executor with the interface of ``ProcessPoolExecutor``.

    Args:
        max_workers: number of worker processes; default ``allcores.cpu_count()``.
        mp_context: a start method name or multiprocessing context (default fork on Linux).
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker.
        max_tasks_per_child: a worker is replaced after this many items.
        timeout, retries, retry_on, max_memory, memory_reserve, backend, address: allcores
            extras, as on :class:`allcores.Pool` (``backend="ray"`` runs on a cluster).

    >>> import allcores
    >>> with allcores.Executor(2) as ex:
    ...     ex.submit(pow, 2, 10).result()
    1024
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        max_memory: int | None = None,
        memory_reserve: int | str | None = "auto",
        backend: Any = None,
        address: str | None = None,
    ) -> None:
        if isinstance(max_workers, int) and not isinstance(max_workers, bool) and max_workers < 1:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers}")
        options = TaskOptions(item_timeout=timeout, retries=retries, retry_on=retry_on)
        cluster = _backends.cluster_engine(
            backend, address, max_workers, options,
            {"initializer": initializer, "max_tasks_per_child": max_tasks_per_child,
             "mp_context": mp_context, "max_memory": max_memory},
        )
        self._engine: Engine = cluster or LocalEngine(
            max_workers,
            mp_context,
            initializer,
            initargs,
            max_tasks_per_child,
            max_memory,
            options,
            memory_reserve,
        )
        self._max_workers = self._engine.workers
        # One item a message: a future's item starts as soon as a worker is free.
        self._submit_options = self._engine.options.merged(chunksize=1)
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._pending: weakref.WeakSet[Future] = weakref.WeakSet()
        # As ProcessPoolExecutor: an executor collected without shutdown() lets the work
        # already submitted finish (its futures may still be held), then its workers stop.
        self._finalizer = weakref.finalize(self, _drain, self._engine)
        _live_executors.add(self)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; returns a ``concurrent.futures.Future``."""
        with self._shutdown_lock:
            if self._shutdown:
                raise _errors.PoolClosedError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise _errors.PoolClosedError(
                    "cannot schedule new futures after interpreter shutdown"
                )
            future: Future = Future()
            self._engine.start(
                fn,
                [(args, kwargs)],
                _FutureSink(future),
                mode=CALL_ARGS,
                options=self._submit_options,
                on_dispatch=future.set_running_or_notify_cancel,
            )
            self._pending.add(future)
            return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = "auto",
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Like ``ProcessPoolExecutor.map``: results in order, an iterator.

        ``timeout`` bounds the wait from this call on (TimeoutError); ``chunksize`` is "auto"
        (adaptive) unless given; ``buffersize`` bounds how many items are read ahead of the
        consumer (the input is always read lazily).
        """
        # Python 3.14's checks and words (ProcessPoolExecutor.map), on every version.
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize == "auto" and buffersize is not None:
            chunksize = 1  # buffersize counts items ahead of the consumer: one item a chunk
        options = self._engine.options.merged(chunksize=chunksize)
        engine = self._engine
        with self._shutdown_lock:
            if self._shutdown:
                raise _errors.PoolClosedError("cannot schedule new futures after shutdown")
            sink = IterSink()
            sink.on_consume = engine.consumed
            job = engine.start(
                fn,
                zip(*iterables),  # noqa: B905 - stops at the shortest, as the stdlib does
                sink,
                mode=CALL_STAR,
                options=options,
                max_outstanding=buffersize,
                # a failure is raised after the results before it, as ProcessPoolExecutor does
                errors_in_place=True,
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        return _results(sink, deadline, lambda: engine.cancel(job, CancelledError()))

    def statistics(self) -> Any:
        """Where the time of everything this executor ran went (an :class:`allcores.RunStats`).

        >>> import allcores
        >>> with allcores.Executor(2) as ex:
        ...     _ = list(ex.map(abs, range(10)))
        ...     ex.statistics().items
        10
        """
        return self._engine.statistics()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with cancel_futures, cancel what has not started."""
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                for future in list(self._pending):
                    future.cancel()
        self._engine.close()
        if wait:
            self._engine.join()

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM, as ``ProcessPoolExecutor.terminate_workers()``
        (Python 3.14) does, on every Python allcores supports.

        The executor shuts down: futures not yet running are cancelled, and those running fail
        with ``WorkerCrashedError`` (a ``BrokenProcessPool``, as the standard executor's do).
        Submitting afterwards raises ``RuntimeError``. Use it when work must stop at once, for
        example a search that has found its answer.

        >>> import allcores
        >>> ex = allcores.Executor(2)
        >>> ex.terminate_workers()
        >>> ex.submit(abs, -1)
        Traceback (most recent call last):
        ...
        allcores.errors.PoolClosedError: cannot schedule new futures after shutdown
        """
        self._force_shutdown("terminate_workers()", _signal.SIGTERM)

    def kill_workers(self) -> None:
        """Like :meth:`terminate_workers`, with SIGKILL (``ProcessPoolExecutor.kill_workers()``,
        Python 3.14): for workers that may ignore or handle SIGTERM."""
        self._force_shutdown("kill_workers()", _signal.SIGKILL)

    def _force_shutdown(self, how: str, sig: int) -> None:
        with self._shutdown_lock:
            self._shutdown = True
            running = []
            for future in list(self._pending):
                # what has not started is cancelled (cancel_futures=True, as the stdlib does)
                if not future.cancel() and not future.done():
                    running.append(future)
        for future in running:
            try:
                future.set_exception(
                    _errors.WorkerCrashedError(
                        f"{how} stopped the worker running this item",
                        signal_name=_signal.Signals(sig).name,
                        cause=f"the executor's {how} was called",
                    )
                )
            except InvalidStateError:
                pass  # its result arrived meanwhile
        for pid in self._engine.pids():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        self._engine.terminate()


# As ProcessPoolExecutor: when the main thread's code ends, the work already submitted to an
# executor still open finishes before the interpreter exits (then its workers stop), and
# submit() from an atexit handler raises RuntimeError. Run by threading's exit hook, which comes
# before atexit handlers (the engine's own atexit handler terminates what is left).
_live_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_interpreter_exiting = False


# Engines of executors collected without shutdown(): closed, finishing their work; at exit
# that work finishes too, as the standard executor's does (its manager thread is joined).
_draining: set[Engine] = set()


def _drain(engine: Engine) -> None:
    """What a collected executor's finalizer does: let the submitted work finish, then stop.

    It may run in any thread, wherever a collection happens (the manager's own included), so it
    takes no lock: adding to and discarding from a set are single steps under the GIL.
    """
    engine.close()
    if not _interpreter_exiting:
        for done in [e for e in list(_draining) if not e.alive]:
            _draining.discard(done)
        # Only an engine with work left is kept for the exit: one shut down and joined holds
        # nothing to finish, and keeping it would keep its stopped manager thread referenced
        # (CPython's own tests count such threads as leaked, and wait on each for seconds).
        if engine.alive:
            _draining.add(engine)


def _finish_at_exit() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True
    for executor in list(_live_executors):
        try:
            executor.shutdown(wait=True)
        except Exception:  # one broken executor must not keep the others' work from finishing
            pass
    draining = list(_draining)
    _draining.clear()
    for engine in draining:
        try:
            engine.join()
        except Exception:
            pass


def _forget_parents_executors() -> None:
    """A forked child (a worker, or a process a task starts) inherits the parent's executors
    but none of their manager threads: at its exit it must not wait for their work, which
    is the parent's (a worker forked while an executor had work pending hung at its exit)."""
    _live_executors.clear()
    _draining.clear()


os.register_at_fork(after_in_child=_forget_parents_executors)

try:
    threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # imported while the interpreter is already exiting
    pass


# What Executor.map raises when its timeout passes: concurrent.futures.TimeoutError, which from
# Python 3.11 on is the builtin TimeoutError; on 3.10 a class that is both, so `except
# futures.TimeoutError` (the stdlib's) and `except TimeoutError` (ours until now) both catch it.
_MapTimeoutError: type[Exception] = _FuturesTimeoutError
if _FuturesTimeoutError is not TimeoutError:
    _MapTimeoutError = type("TimeoutError", (_FuturesTimeoutError, TimeoutError), {})


def _results(sink: IterSink, deadline: float | None, cancel: Callable[[], None]) -> Iterator[Any]:
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                batch = sink.next_batch(remaining)
            except TimeoutError:
                # concurrent.futures.TimeoutError: the builtin one from Python 3.11 on, its own
                # class on 3.10, where `except futures.TimeoutError` must catch it.
                raise _MapTimeoutError from None
            except BaseException as exc:
                raise _as_executor_error(exc) from exc.__cause__
            if batch is None:
                return
            # Popped, never held in a local: the caller's result may be freed as soon as it
            # lets go of it (CPython's test_free_reference, issue #14406).
            batch.reverse()
            while batch:
                if type(batch[-1]) is Raised:
                    raise _as_executor_error(batch.pop().error)
                yield batch.pop()
    finally:
        cancel()
