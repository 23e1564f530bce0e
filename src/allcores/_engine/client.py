"""The engine's door: what every facade (Pool, Executor, the one-liners, and the batch tools
through them) calls, and nothing else.

:class:`Engine` is the interface a facade sees; :class:`LocalEngine` runs it on worker processes
of this machine (the manager thread, ``manager.py``). A facade turns its keyword arguments into
one :class:`~allcores._engine.options.TaskOptions`, hands the engine a function, the items and a
:class:`~allcores._engine.jobs.Sink`, and reads the results from the sink.
"""

from __future__ import annotations

import abc
import multiprocessing
import os
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from allcores import errors as _errors
from allcores._engine import serialization
from allcores._engine.cpu import cpu_count
from allcores._engine.jobs import Call, Job, Sink
from allcores._engine.manager import Manager
from allcores._engine.messages import CALL_ONE
from allcores._engine.options import TaskOptions
from allcores._engine.processes import Initializer

# Functions whose pickled form a pool keeps, so apply_async in a loop pickles its function once.
FUNCTION_CACHE_SIZE = 128
# Overrides the default start method for every pool (e.g. to test under spawn).
START_METHOD_ENV = "ALLCORES_START_METHOD"


def resolve_context(context: Any = None) -> Any:
    """A multiprocessing context from None, a start-method name, or a context object.

    The default is ``fork`` on Linux: it starts a worker in about a millisecond where ``spawn``
    and ``forkserver`` take 50-100 ms, and the workers are started before the pool's own thread
    exists, so the fork is the safe, single-threaded kind. Elsewhere (macOS, Windows) it is the
    platform's default. ``ALLCORES_START_METHOD`` overrides it; ``context=`` overrides both.
    Functions and arguments travel the same way under every method (cloudpickle for functions),
    so code that works under one works under all.
    """
    if context is None:
        from_env = os.environ.get(START_METHOD_ENV)
        if from_env and from_env not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"the environment variable {START_METHOD_ENV}={from_env!r} is not a start "
                f"method: this platform offers {', '.join(multiprocessing.get_all_start_methods())}"
                f". Set it to one of those, or unset it for the default"
            )
        context = from_env or ("fork" if sys.platform.startswith("linux") else None)
    if context is None or isinstance(context, str):
        methods = multiprocessing.get_all_start_methods()
        if context is not None and context not in methods:
            raise ValueError(
                f"unknown start method {context!r}: this platform offers {', '.join(methods)}"
            )
        return multiprocessing.get_context(context)
    if not hasattr(context, "Process"):
        raise TypeError(
            f"context must be None, a start method name or a multiprocessing context, "
            f"got {context!r}"
        )
    return context


def check_workers(workers: int | None) -> int:
    if workers is None:
        return cpu_count()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"the number of workers must be a positive integer, got {workers!r}")
    return workers


# By default new work waits while the machine has less than this share of its memory available:
# past that point the kernel's OOM killer is close, and it kills whichever process it likes.
DEFAULT_MEMORY_RESERVE_FRACTION = 0.05


def resolve_memory_reserve(reserve: int | str | None) -> int | None:
    """Bytes of available memory below which new work is held back (None: never)."""
    if reserve is None:
        return None
    if reserve == "auto":
        from allcores._engine.processes import available_memory

        total = available_memory()[1]
        return None if total is None else int(DEFAULT_MEMORY_RESERVE_FRACTION * total)
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise ValueError(
            f"memory_reserve must be a number of bytes, 'auto' or None, got {reserve!r}"
        )
    return reserve




class Engine(abc.ABC):
    """The facades' only door to running work: submit calls, take results, shut down.

    A call is a function, its items, how to call the function on an item (``mode``), its
    :class:`TaskOptions` and a :class:`Sink`. The engine runs the items and reports through the
    sink alone, from any thread of its own:

    - ``sink.deliver(values)`` with the results of consecutive items, in input order when the
      call is ``ordered`` (else in any order), each item exactly once, failed items standing in
      as ``on_error`` says;
    - then exactly one of ``sink.finish(failures)`` (every item settled) or
      ``sink.fail(error)`` (the call failed as a whole: fail-fast, cancelled, pool stopped).

    What a backend must provide (the local processes are one; a cluster backend is another):

    - ``workers``: how many items may run at once; ``options``: the defaults of every call.
    - :meth:`start`: accept a call and return a handle for :meth:`cancel`; never block the
      caller for long, never run the function in the caller's thread; raise
      ``PoolClosedError`` at once after :meth:`close`/:meth:`terminate`, and the pool's error
      at once when it is broken.
    - :meth:`cancel`: stop feeding a call and fail its sink with the given error.
    - :meth:`consumed`: the caller took results out of a bounded sink (``imap``), so more input
      may be read (back-pressure).
    - the honour of ``TaskOptions``: a per-item timeout, retries of crashes, timeouts and
      ``retry_on`` exceptions, the ``on_error`` policy, progress, the chunk size.
    - :meth:`close` (finish the submitted calls, then stop), :meth:`terminate` (stop now, fail
      what is unfinished with ``PoolClosedError``), :meth:`join`, ``alive``, ``accepting`` and
      :meth:`pids` (the worker processes of this machine, if any), and :meth:`statistics`
      (the run statistics, ``allcores/_stats.py``).
    """

    workers: int
    options: TaskOptions

    @abc.abstractmethod
    def start(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        sink: Sink,
        *,
        mode: int = CALL_ONE,
        ordered: bool = True,
        options: TaskOptions | None = None,
        on_dispatch: Callable[[], bool] | None = None,
        max_outstanding: int | None = None,
        errors_in_place: bool = False,
    ) -> object:
        """Run ``fn`` over ``iterable``; results flow into ``sink``.

        ``on_dispatch`` is called just before the first item is sent; False means the call
        was cancelled meanwhile (a Future), and nothing runs. ``max_outstanding`` bounds the
        chunks in flight or waiting for the caller (``Executor.map(buffersize=)``).
        ``errors_in_place`` (with ``on_error="raise"``): a failed item is delivered in its
        place as a ``jobs.Raised(error)`` instead of failing the call, so an iterator raises it
        after the results before it, as the standard pools' iterators do. An exception of the
        caller's input iterator is ``sink.fail``-ed after every item read before it.
        """

    @abc.abstractmethod
    def cancel(self, handle: object, error: BaseException) -> None:
        """Stop feeding the call ``handle``; its sink fails with ``error``."""

    @abc.abstractmethod
    def consumed(self) -> None:
        """The caller took results from a bounded sink: more input may flow."""

    @abc.abstractmethod
    def close(self) -> None:
        """Accept no more calls; stop once the submitted ones are done."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Stop now; unfinished calls fail with PoolClosedError."""

    @abc.abstractmethod
    def join(self, timeout: float | None = None) -> bool:
        """Wait until stopped after close() or terminate(); True if it did."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the engine has stopped (closed, terminated or broken)."""

    @property
    @abc.abstractmethod
    def accepting(self) -> bool:
        """True until close() or terminate()."""

    def pids(self) -> list[int]:
        """Process ids of the workers on this machine (none for a remote backend)."""
        return []

    def statistics(self) -> Any:
        """The :class:`allcores.RunStats` of everything run so far. A backend that records no
        chunks returns empty figures; each call's own ``sink.record`` is filled by the
        local engine only."""
        from allcores._stats import empty_stats

        return empty_stats("", self.workers, 0.0, 0)


class LocalEngine(Engine):
    """Worker processes on this machine, run by one manager thread (``manager.py``)."""

    def __init__(
        self,
        workers: int | None = None,
        context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
        max_memory: int | None = None,
        options: TaskOptions | None = None,
        memory_reserve: int | str | None = "auto",
    ) -> None:
        self.workers = check_workers(workers)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        if max_tasks_per_child is not None and (
            isinstance(max_tasks_per_child, bool)
            or not isinstance(max_tasks_per_child, int)
            or max_tasks_per_child < 1
        ):
            raise ValueError(
                f"maxtasksperchild must be a positive integer or None, got {max_tasks_per_child!r}"
            )
        if max_memory is not None and (
            isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory <= 0
        ):
            raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
        self.context = resolve_context(context)
        self.options = options or TaskOptions()
        # The initializer and its arguments go with each worker's start (see Initializer).
        init = None if initializer is None else Initializer(initializer, tuple(initargs))
        self._functions: OrderedDict[Any, tuple[int, bytes]] = OrderedDict()
        self._function_ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self._manager = Manager(
            self.workers,
            self.context,
            init,
            max_tasks_per_child,
            max_memory,
            resolve_memory_reserve(memory_reserve),
        )

    def statistics(self) -> Any:
        """The pool's :class:`allcores.RunStats` so far."""
        from allcores._stats import empty_stats, pool_stats

        recorder = self._manager.recorder
        if recorder is None:  # recording switched off (benchmarks/stats_overhead.py)
            return empty_stats("", self.workers, 0.0, 0)
        return pool_stats(recorder)

    @staticmethod
    def _pickle_function(fn: Any, what: str) -> bytes:
        try:
            return serialization.dumps_function(fn)
        except Exception as exc:
            hint = (
                serialization.pickling_hint(what, fn, exc)
                + " Functions may be lambdas or closures, but everything they reference must "
                "pickle too."
            )
            raise _errors.keeping_type(exc, hint)  # caused by exc when it is a new error

    def _register(self, fn: Callable[..., Any]) -> tuple[int, bytes, bool]:
        """The id and pickled form of ``fn``, pickled once per pool for plain functions, and
        whether it is cached (then later calls reuse the id, and workers keep the function)."""
        if not callable(fn):
            raise TypeError(f"the task function must be callable, got {fn!r}")
        # Plain functions only: a bound method would keep its object alive in the cache (the
        # standard executor holds no reference to a submitted callable once it ran).
        cacheable = isinstance(fn, types.FunctionType) or (
            isinstance(fn, types.BuiltinFunctionType)
            and isinstance(fn.__self__, (types.ModuleType, type(None)))
        )
        if cacheable:
            with self._lock:
                found = self._functions.get(fn)
                if found is not None:
                    self._functions.move_to_end(fn)
                    return (*found, True)
        entry = (next(self._function_ids), self._pickle_function(fn, "the task function"))
        if cacheable:
            evicted = None
            with self._lock:
                self._functions[fn] = entry
                if len(self._functions) > FUNCTION_CACHE_SIZE:
                    evicted = self._functions.popitem(last=False)[1][0]
            if evicted is not None:
                self._manager.forget_function(evicted)
        return (*entry, cacheable)

    def start(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        sink: Sink,
        *,
        mode: int = CALL_ONE,
        ordered: bool = True,
        options: TaskOptions | None = None,
        on_dispatch: Callable[[], bool] | None = None,
        max_outstanding: int | None = None,
        errors_in_place: bool = False,
    ) -> Job | Call:
        options = options or self.options
        fn_id, blob, cached = self._register(fn)
        if (
            type(iterable) is list
            and len(iterable) == 1
            and max_outstanding is None
            and not options.progress
        ):
            # One item (apply_async, submit): a small Call until it is dispatched, so a million
            # pending calls stay cheap (see jobs.Call).
            call = Call(fn_id, blob, cached, iterable[0], sink, mode, options, on_dispatch,
                        self.workers, function_name(fn))
            self._manager.submit(call)
            return call
        job = Job(
            fn_id,
            blob,
            iterable,
            sink,
            workers=self.workers,
            mode=mode,
            ordered=ordered,
            options=options,
            on_dispatch=on_dispatch,
            max_outstanding=max_outstanding,
            fn_cached=cached,
            function=function_name(fn),
            errors_in_place=errors_in_place,
        )
        self._manager.submit(job)
        return job

    def cancel(self, handle: object, error: BaseException) -> None:
        assert isinstance(handle, (Job, Call))
        self._manager.cancel(handle, error)

    def abort(self, handle: object, error: BaseException) -> None:
        """:meth:`cancel`, and kill the workers running the call's items now (they are
        replaced); the pool and its other calls go on. A Dask worker's local pool uses it
        when a cluster call is interrupted (``backends/_remote.abort``)."""
        assert isinstance(handle, (Job, Call))
        self._manager.cancel(handle, error, stop_running=True)

    def consumed(self) -> None:
        self._manager.wake()

    def close(self) -> None:
        self._manager.close()

    def terminate(self) -> None:
        self._manager.terminate()

    def join(self, timeout: float | None = None) -> bool:
        return self._manager.join(timeout)

    @property
    def alive(self) -> bool:
        return self._manager.alive

    @property
    def accepting(self) -> bool:
        return self._manager.accepting

    def pids(self) -> list[int]:
        return self._manager.pids()

def function_name(fn: Any) -> str:
    """A short name for ``fn`` in statistics and reports: ``module.qualname`` where it has one."""
    while hasattr(fn, "func") and hasattr(fn, "args"):  # functools.partial
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in ("builtins", "__main__") else name
