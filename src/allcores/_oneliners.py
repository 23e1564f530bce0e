"""``allcores.map`` and ``allcores.imap``: every core in one call, no pool to manage.

Both run on a shared default pool that starts on first use and stays up (like joblib's reusable
executor), so a second call costs no process start-up. It is rebuilt when ``workers=`` changes,
after Ctrl-C (whose running tasks it stops), and in a forked child; ``allcores.shutdown()`` stops
it and it is stopped at interpreter exit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from allcores import backends as _backends
from allcores._engine.client import check_workers, resolve_context
from allcores._engine.jobs import MapResults
from allcores._engine.messages import CALL_ONE, CALL_STAR
from allcores._engine.options import OnError
from allcores._engine.recording import CallRecord
from allcores._pool import Pool, _as_sequence

__all__ = ["imap", "map", "shutdown"]

_lock = threading.Lock()
_default: Pool | None = None
_default_key: tuple | None = None
_default_pid: int | None = None


def _pool(workers: int | None, backend: Any = None, address: str | None = None) -> Pool:
    global _default, _default_key, _default_pid
    name, address = _backends.requested(backend, address)
    if name is not None:
        return _cluster_pool(name, address, workers)
    count = check_workers(workers)
    key = (count, resolve_context().get_start_method())
    with _lock:
        if _default is not None and _default_pid != os.getpid():
            _default = None  # inherited through fork: the manager thread is not in this process
        if _default is not None and (_default_key != key or not _default._engine.alive):
            _default.terminate()
            _default = None
        if _default is None:
            _default = Pool(count)
            _default_key, _default_pid = key, os.getpid()
        return _default


# One pool per cluster asked for (its engine thread drives every call to that cluster).
_cluster_pools: dict[tuple, Pool] = {}


def _cluster_pool(name: Any, address: str | None, workers: int | None) -> Pool:
    key = (id(name) if not isinstance(name, str) else name, address, workers)
    with _lock:
        pool = _cluster_pools.get(key)
        if pool is not None and not pool._engine.alive:
            pool = None
        if pool is None:
            pool = _cluster_pools[key] = Pool(workers, backend=name, address=address)
        return pool


def shutdown() -> None:
    """Stop the shared default pool of :func:`map` and :func:`imap` (it restarts when needed)."""
    global _default
    with _lock:
        pool, _default = _default, None
        pools = list(_cluster_pools.values())
        _cluster_pools.clear()
    for p in [pool, *pools]:
        if p is not None:
            p.terminate()


def _interrupted(pool: Pool) -> None:
    global _default
    with _lock:
        if _default is pool:
            _default = None
        for key, p in list(_cluster_pools.items()):
            if p is pool:
                del _cluster_pools[key]
    pool.terminate()  # on a cluster: every task of it is cancelled (Ray) or killed (Dask)


def map(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    ordered: bool = True,
    chunksize: int | str = "auto",
    progress: Any = False,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
    on_error: OnError = "raise",
    star: bool = False,
    report: str | os.PathLike[str] | None = None,
    backend: Any = None,
    address: str | None = None,
) -> MapResults:
    """``[fn(x) for x in iterable]`` on every core; a list, in input order by default.

    Args:
        fn: any callable, lambdas and closures included.
        workers: processes to use; default ``allcores.cpu_count()``.
        ordered: False returns results in the order they finish (slightly less waiting).
        chunksize: "auto" learns each item's cost and sizes chunks to it; or a fixed int.
        progress: True shows a bar with rate and ETA (tqdm if installed).
        timeout: seconds one item may run before it is stopped (TaskTimeoutError).
        retries, retry_on: run failed items again (crashes and timeouts always; task
            exceptions of the ``retry_on`` types).
        on_error: "raise" (default), "collect" or "skip"; see :class:`allcores.MapResults`.
        star: call ``fn(*item)`` instead of ``fn(item)``.
        report: a path: write an HTML report of the call there (see :func:`allcores.report`);
            the statistics are in the result's ``.stats`` either way.
        backend, address: run on a cluster: ``backend="dask"`` or ``"ray"`` with the
            scheduler's ``address`` (none: a local cluster, started once), or a live
            ``distributed.Client``; default this machine, or ``allcores.backend()`` /
            ``ALLCORES_BACKEND``. Same semantics everywhere (docs/cluster.md).

    >>> import allcores
    >>> allcores.map(lambda x: x * x, range(5))
    [0, 1, 4, 9, 16]
    """
    _check_report(report)
    pool = _pool(workers, backend, address)
    options = pool._options(timeout, retries, retry_on, on_error, progress, chunksize)
    mode = CALL_STAR if star else CALL_ONE
    try:
        if ordered:
            result = pool._async(fn, _as_sequence(iterable), mode, options)
            try:
                out = result.get()
            finally:
                if report is not None:
                    _write_report(result._sink.record, report)
            return out
        out = MapResults()
        it = pool._iter(fn, iterable, mode, False, options)
        try:
            out.extend(it)
        finally:
            if report is not None:
                _write_report(it._sink.record, report)
        out.failures = it.failures
        out._record = it._sink.record
        return out
    except KeyboardInterrupt:
        _interrupted(pool)
        raise


def _check_report(path: str | os.PathLike[str] | None) -> None:
    """A report path that cannot be written fails now, before the work, not after it."""
    if path is not None:
        from allcores._report import check_path

        check_path(path)


def _write_report(record: CallRecord | None, path: str | os.PathLike[str]) -> None:
    """The report of one call, written whether it succeeded or failed (a failed run is the one
    whose report is most wanted)."""
    if record is None:
        return
    from allcores._report import report
    from allcores._stats import call_stats

    report(call_stats(record), path)


def imap(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    ordered: bool = True,
    chunksize: int | str = "auto",
    progress: Any = False,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
    on_error: OnError = "raise",
    star: bool = False,
    max_held_bytes: int | None = None,
    report: str | os.PathLike[str] | None = None,
    backend: Any = None,
    address: str | None = None,
) -> Iterator[Any]:
    """Like :func:`map`, but yields results as they arrive, reading the input lazily.

    Memory stays flat whatever the input's length: only a bounded number of items are in
    flight or waiting to be consumed, and in order (``ordered=True``) the results that finish
    behind a slow item are held up to ``max_held_bytes`` (default 64 MiB) before the input
    waits. Stopping early (``break``) stops feeding the workers.
    ``report=`` writes the HTML report once the iteration ends (or stops early).

    >>> import allcores
    >>> sorted(allcores.imap(str.upper, ["a", "b"], ordered=False))
    ['A', 'B']
    """
    _check_report(report)
    pool = _pool(workers, backend, address)
    options = pool._options(timeout, retries, retry_on, on_error, progress, chunksize,
                            max_held_bytes)
    it = pool._iter(fn, iterable, CALL_STAR if star else CALL_ONE, ordered, options)
    return _guarded(pool, it, report)


def _guarded(pool: Pool, it, report: str | os.PathLike[str] | None) -> Iterator[Any]:
    try:
        yield from it
    except KeyboardInterrupt:
        _interrupted(pool)
        raise
    finally:
        it.close()
        if report is not None:
            _write_report(it._sink.record, report)
