"""``allcores.Pool``: a drop-in for ``multiprocessing.Pool`` on the allcores engine.

Same constructor, same methods, same results and exception types, so code written for the
standard pool runs unchanged; and underneath, persistent workers with pull-based dispatch,
adaptive chunk sizes, lambdas that pickle, worker tracebacks, crash survival and timeouts.
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from allcores import backends as _backends
from allcores._engine.client import Engine, LocalEngine
from allcores._engine.jobs import IterSink, ListSink, MapResults, Raised
from allcores._engine.messages import CALL_ARGS, CALL_ONE, CALL_STAR
from allcores._engine.options import TaskOptions
from allcores.errors import PoolClosedError

if TYPE_CHECKING:
    from allcores._stats import RunStats

__all__ = ["AsyncResult", "Pool"]


class AsyncResult:
    """The pending result of ``apply_async`` / ``map_async``, as in ``multiprocessing``."""

    def __init__(self, sink: ListSink) -> None:
        self._sink = sink

    def ready(self) -> bool:
        return self._sink.done.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._sink.error is None

    def wait(self, timeout: float | None = None) -> None:
        self._sink.done.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; raises the task's exception, or ``multiprocessing.TimeoutError``."""
        if not self._sink.done.wait(timeout):
            raise multiprocessing.TimeoutError
        return self._sink.value()


class IMapIterator:
    """What ``imap`` / ``imap_unordered`` return; ``next(timeout)`` as in multiprocessing.

    A failed item's exception is raised when the iteration reaches it. As in the standard pool,
    the iteration then goes on with the next items when each item is its own task (chunksize
    None or 1), and ends there with a bigger explicit chunksize (``go_on_after_error``).
    """

    def __init__(self, sink: IterSink, on_close: Callable[[], None] | None = None,
                 go_on_after_error: bool = True) -> None:
        self._sink = sink
        self._batch: list = []
        self._pos = 0
        self._on_close = on_close
        self._done = False
        self._go_on = go_on_after_error

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        while self._pos >= len(self._batch):
            if self._done:
                raise StopIteration
            try:
                batch = self._sink.next_batch(timeout)
            except TimeoutError:
                raise multiprocessing.TimeoutError from None
            if batch is None:
                self._done = True
                raise StopIteration
            self._batch, self._pos = batch, 0
        value = self._batch[self._pos]
        self._pos += 1
        if type(value) is Raised:
            if not self._go_on:
                self.close()
            raise value.error
        return value

    __next__ = next

    @property
    def failures(self):
        """Items that failed under on_error="collect"/"skip" (complete once exhausted)."""
        return self._sink.failures

    @property
    def stats(self) -> RunStats | None:
        """The call's :class:`allcores.RunStats` so far (complete once exhausted)."""
        record = self._sink.record
        if record is None:
            return None
        from allcores._stats import call_stats

        return call_stats(record)

    def close(self) -> None:
        """Stop early: no more input is sent; chunks already running finish."""
        if not self._done and self._on_close is not None:
            self._done = True
            self._on_close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Pool:
    """A process pool with the interface of ``multiprocessing.Pool``.

    Args:
        processes: number of worker processes; default ``allcores.cpu_count()``.
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker.
        maxtasksperchild: a worker is replaced after running this many items.
        context: a start method name ("fork", "spawn", "forkserver") or a multiprocessing
            context; default fork on Linux (see ``allcores._engine.client.resolve_context``).
        timeout: default per-item timeout in seconds for every call (allcores extra).
        retries, retry_on: default retries for every call (allcores extra).
        max_memory: recycle a worker whose resident memory passes this many bytes after its
            current work (allcores extra).
        memory_reserve: hold back new work while the machine has fewer bytes than this
            available, rather than let the OOM killer pick a victim; "auto" is 5% of RAM, None
            turns it off. One chunk always runs, so the pool never deadlocks (allcores extra).
        report: a path: write an HTML report of everything the pool ran when it is joined or
            terminated (``with`` terminates); see :func:`allcores.report` (allcores extra).
        backend, address: run on a cluster instead: "dask" or "ray" (with the scheduler's
            address, or none for a local cluster) or a live ``distributed.Client``; default
            this machine's processes, or what ``allcores.backend()`` / ``ALLCORES_BACKEND``
            say (allcores extra, docs/cluster.md).

    Every mapping method also takes keyword-only ``timeout=``, ``retries=``, ``on_error=`` and
    ``progress=``.

    >>> import allcores
    >>> with allcores.Pool(2) as pool:
    ...     pool.map(abs, [-1, -2, 3])
    [1, 2, 3]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        max_memory: int | None = None,
        memory_reserve: int | str | None = "auto",
        report: str | os.PathLike[str] | None = None,
        backend: Any = None,
        address: str | None = None,
    ) -> None:
        if report is not None:
            from allcores._report import check_path

            check_path(report)  # now, not after the pool's work
        self._report_path = report
        options = TaskOptions(item_timeout=timeout, retries=retries, retry_on=retry_on)
        cluster = _backends.cluster_engine(
            backend, address, processes, options,
            {"initializer": initializer, "maxtasksperchild": maxtasksperchild,
             "context": context, "max_memory": max_memory},
        )
        self._engine: Engine = cluster or LocalEngine(
            processes,
            context,
            initializer,
            initargs,
            maxtasksperchild,
            max_memory,
            options,
            memory_reserve,
        )
        self._processes = self._engine.workers
        self._single_options = self._options(chunksize=1)  # apply_async: made once, not per call
        self._finalizer = weakref.finalize(self, self._engine.terminate)

    # -- the door to the engine: every method (and allcores.map/imap) goes through these ------

    def _options(self, timeout=None, retries=None, retry_on=None, on_error=None, progress=None,
                 chunksize=None, max_held_bytes=None) -> TaskOptions:
        """The pool's options with this call's keywords (None: the pool's default)."""
        return self._engine.options.merged(
            item_timeout=timeout, retries=retries, retry_on=retry_on, on_error=on_error,
            progress=progress, chunksize=chunksize, max_held_bytes=max_held_bytes,
        )

    def _async(self, fn, iterable, mode, options, callback=None, error_callback=None,
               single=False) -> AsyncResult:
        sink = ListSink(single=single, callback=callback, error_callback=error_callback)
        self._engine.start(fn, iterable, sink, mode=mode, options=options)
        return AsyncResult(sink)

    def _iter(self, fn, iterable, mode, ordered, options,
              go_on_after_error: bool = False) -> IMapIterator:
        engine = self._engine
        sink = IterSink()
        sink.on_consume = engine.consumed
        # A failed item is raised at its position, after the items before it, as
        # multiprocessing.Pool.imap does (see IMapIterator for what comes after it).
        job = engine.start(fn, iterable, sink, mode=mode, ordered=ordered, options=options,
                           errors_in_place=True)
        return IMapIterator(sink, lambda: engine.cancel(job, CancelledError()),
                            go_on_after_error=go_on_after_error)

    # -- multiprocessing.Pool API -------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: dict[str, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` in a worker; blocks for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: dict[str, Any] | None = None,
                    callback: Callable[[Any], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None,
                    ) -> AsyncResult:
        """Like :meth:`apply`, but returns an :class:`AsyncResult` at once."""
        item = (tuple(args), dict(kwds or {}))
        return self._async(func, [item], CALL_ARGS, self._single_options, callback,
                           error_callback, single=True)

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any],
            chunksize: int | None = None, *, timeout: float | None = None,
            retries: int | None = None, retry_on=None, on_error: str | None = None,
            progress: Any = False) -> MapResults:
        """``[func(x) for x in iterable]`` on every worker, in order."""
        options = self._options(timeout, retries, retry_on, on_error, progress, chunksize)
        return self._async(func, _as_sequence(iterable), CALL_ONE, options).get()

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                  chunksize: int | None = None,
                  callback: Callable[[Any], object] | None = None,
                  error_callback: Callable[[BaseException], object] | None = None,
                  *, timeout: float | None = None, retries: int | None = None,
                  retry_on=None, on_error: str | None = None,
                  progress: Any = False) -> AsyncResult:
        options = self._options(timeout, retries, retry_on, on_error, progress, chunksize)
        return self._async(func, _as_sequence(iterable), CALL_ONE, options, callback,
                           error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None, **extras: Any) -> MapResults:
        """``[func(*args) for args in iterable]``, in order."""
        return self.starmap_async(func, iterable, chunksize, **extras).get()

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None,
                      callback: Callable[[Any], object] | None = None,
                      error_callback: Callable[[BaseException], object] | None = None,
                      *, timeout: float | None = None, retries: int | None = None,
                      retry_on=None, on_error: str | None = None,
                      progress: Any = False) -> AsyncResult:
        options = self._options(timeout, retries, retry_on, on_error, progress, chunksize)
        return self._async(func, _as_sequence(iterable), CALL_STAR, options, callback,
                           error_callback)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any],
             chunksize: int | None = None, *, timeout: float | None = None,
             retries: int | None = None, retry_on=None, on_error: str | None = None,
             progress: Any = False, max_held_bytes: int | None = None) -> IMapIterator:
        """Results in input order, each as soon as it and those before it are done.

        The input is read lazily, with a bounded number of items in flight. Results that finish
        behind a slow item wait for it in memory: past ``max_held_bytes`` of them (default
        64 MiB) no more input is read until the slow item is done.
        """
        options = self._options(timeout, retries, retry_on, on_error, progress, chunksize,
                                max_held_bytes)
        return self._iter(func, iterable, CALL_ONE, True, options,
                          _go_on_after_error(on_error, chunksize))

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int | None = None, *, timeout: float | None = None,
                       retries: int | None = None, retry_on=None,
                       on_error: str | None = None, progress: Any = False) -> IMapIterator:
        """Results in the order they finish."""
        options = self._options(timeout, retries, retry_on, on_error, progress, chunksize)
        return self._iter(func, iterable, CALL_ONE, False, options,
                          _go_on_after_error(on_error, chunksize))

    def close(self) -> None:
        """Accept no more work; the workers exit once the submitted work is done."""
        self._engine.close()

    def terminate(self) -> None:
        """Stop the workers now; unfinished results fail with PoolClosedError."""
        self._engine.terminate()
        self._write_report()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the workers to exit; call close() or terminate() first."""
        if self._engine.accepting:  # the standard pool raises the same
            raise ValueError("Pool is still running: call close() or terminate() before join()")
        if self._engine.join(timeout):
            self._write_report()

    def __reduce__(self) -> Any:
        # The standard pool's words: a pool lives in the process that made it.
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled"
        )

    def __enter__(self) -> Pool:
        if not self._engine.accepting:  # the standard pool raises the same, since Python 3.8
            raise PoolClosedError(
                "Pool not running: `with pool:` needs a pool that was not closed or "
                "terminated; create a new one"
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()  # as multiprocessing.Pool does

    def __repr__(self) -> str:
        state = "running" if self._engine.accepting else "closed"
        return f"<allcores.Pool state={state} processes={self._processes}>"

    # -- allcores extras ----------------------------------------------------------------------

    @property
    def processes(self) -> int:
        """The number of worker processes."""
        return self._processes

    def worker_pids(self) -> list[int]:
        """The process ids of the current workers."""
        return self._engine.pids()

    def statistics(self) -> RunStats:
        """Where the time of everything this pool ran went, from its start until now.

        >>> import allcores
        >>> with allcores.Pool(2) as pool:
        ...     _ = pool.map(abs, range(100))
        ...     pool.statistics().items
        100
        """
        return self._engine.statistics()

    def _write_report(self) -> None:
        path, self._report_path = self._report_path, None  # once, at the first join/terminate
        if path is not None:
            from allcores._report import report

            report(self.statistics(), path)


def _go_on_after_error(on_error: str | None, chunksize: Any) -> bool:
    """Whether imap goes on after raising a failed item's exception: as multiprocessing.Pool
    does when each item is its own task (chunksize 1, its default), unless ``on_error=`` asks
    for a policy of ours."""
    return on_error is None and chunksize in (None, 1, "auto")


def _as_sequence(iterable: Iterable[Any]) -> Iterable[Any]:
    """map() and starmap() need the whole input anyway (as multiprocessing does): a list lets
    the scheduler size chunks from the length; ranges, lists and tuples pass as they are."""
    if isinstance(iterable, (list, tuple, range)):
        return iterable
    return list(iterable)


