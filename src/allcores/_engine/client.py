"""What every facade (Pool, Executor, the one-liners) shares: start method, function
registry, options, and turning a call into a :class:`Job` on the manager."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from allcores import errors as _errors
from allcores._engine import serialization
from allcores._engine.cpu import cpu_count
from allcores._engine.jobs import ON_ERROR_CHOICES, Job, OnError, Sink
from allcores._engine.manager import Manager
from allcores._engine.scheduler import RetryPolicy

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
        context = os.environ.get(START_METHOD_ENV) or (
            "fork" if sys.platform.startswith("linux") else None
        )
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


@dataclass(frozen=True)
class TaskOptions:
    """How the items of one call are run; a pool's defaults, overridable per call.

    Attributes:
        timeout: seconds one item may run; past it the worker is stopped and replaced and the
            item fails with TaskTimeoutError. None: no limit.
        retries: how many more times a failed item runs (crashes and timeouts always, task
            exceptions only when their type is in ``retry_on``).
        retry_on: task exception types that earn a retry.
        on_error: "raise" (fail fast: the first error is raised and pending work is dropped),
            "collect" (the exception stands in the results at the item's place), or "skip"
            (failed items are left out; listed in ``.failures``).
        backoff: seconds before the first retry, doubling with each further attempt.
    """

    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = field(default=())
    on_error: OnError = "raise"
    backoff: float = 0.05

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {self.retries!r}")
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"on_error must be one of {', '.join(map(repr, ON_ERROR_CHOICES))}, "
                f"got {self.on_error!r}"
            )
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))

    def merged(self, **overrides: Any) -> TaskOptions:
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given) if given else self

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, tuple(self.retry_on), self.backoff)


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


def parse_chunksize(chunksize: Any) -> int | None:
    if chunksize is None or chunksize == "auto":
        return None
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive integer or 'auto', got {chunksize!r}")
    return chunksize


class Engine:
    """A manager plus what the facades need to turn calls into jobs."""

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
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child < 1
        ):
            raise ValueError(
                f"maxtasksperchild must be a positive integer or None, got {max_tasks_per_child!r}"
            )
        if max_memory is not None and max_memory <= 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
        self.context = resolve_context(context)
        self.options = options or TaskOptions()
        init_blob = None
        if initializer is not None:
            init_blob = self._pickle_function((initializer, tuple(initargs)), "the initializer")
        self._functions: OrderedDict[Any, tuple[int, bytes]] = OrderedDict()
        self._function_ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self.manager = Manager(
            self.workers,
            self.context,
            init_blob,
            max_tasks_per_child,
            max_memory,
            resolve_memory_reserve(memory_reserve),
        )

    @staticmethod
    def _pickle_function(fn: Any, what: str) -> bytes:
        try:
            return serialization.dumps_function(fn)
        except Exception as exc:
            error = _errors.ArgumentPicklingError(
                serialization.pickling_hint(what, fn, exc)
                + " Functions may be lambdas or closures, but everything they reference must "
                "pickle too."
            )
            raise error from exc

    def register(self, fn: Callable[..., Any]) -> tuple[int, bytes, bool]:
        """The id and pickled form of ``fn``, pickled once per pool for plain functions, and
        whether it is cached (then later calls reuse the id, and workers keep the function)."""
        if not callable(fn):
            raise TypeError(f"the task function must be callable, got {fn!r}")
        cacheable = hasattr(fn, "__code__") or type(fn).__name__ == "builtin_function_or_method"
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
                self.manager.forget_function(evicted)
        return (*entry, cacheable)

    def start(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        sink: Sink,
        *,
        mode: int = 0,
        chunksize: Any = None,
        ordered: bool = True,
        options: TaskOptions | None = None,
        progress: Any = None,
        on_dispatch: Callable[[], bool] | None = None,
        max_outstanding: int | None = None,
    ) -> Job:
        """Submit one call's items; results flow into ``sink``."""
        options = options or self.options
        fn_id, blob, cached = self.register(fn)
        job = Job(
            fn_id,
            blob,
            iterable,
            sink,
            workers=self.workers,
            mode=mode,
            chunksize=parse_chunksize(chunksize),
            ordered=ordered,
            on_error=options.on_error,
            policy=options.policy(),
            timeout=options.timeout,
            progress=None,
            on_dispatch=on_dispatch,
            max_outstanding=max_outstanding,
            fn_cached=cached,
        )
        if progress:
            from allcores._progress import make_progress

            job.progress = make_progress(progress, job.total)
        self.manager.submit(job)
        return job
