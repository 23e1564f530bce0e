"""allcores: make CPU-heavy Python use every core.

The public API is small; everything is imported on first use, so ``import allcores`` stays fast
and never pulls in numpy, pandas, Pillow, tqdm, Dask or Ray::

    import allcores

    squares = allcores.map(lambda x: x * x, range(1_000))      # every core, results in order
    for y in allcores.imap(slow, items, ordered=False):        # results as they arrive
        ...
    with allcores.Pool() as pool:                              # drop-in for multiprocessing.Pool
        pool.map(f, items)
    with allcores.Executor() as ex:                            # drop-in for ProcessPoolExecutor
        ex.submit(f, 1).result()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from allcores import errors
from allcores.errors import (
    PoolClosedError,
    TaskTimeoutError,
    WorkerCrashedError,
)

__version__ = "0.1.0"

# name -> module that defines it; imported the first time the name is used (PEP 562).
_LAZY: dict[str, str] = {
    "Pool": "allcores._pool",
    "AsyncResult": "allcores._pool",
    "Executor": "allcores._executor",
    "map": "allcores._oneliners",
    "imap": "allcores._oneliners",
    "shutdown": "allcores._oneliners",
    "backend": "allcores.backends",
    "MapResults": "allcores._engine.jobs",
    "Failure": "allcores._engine.jobs",
    "cpu_count": "allcores._engine.cpu",
    # run statistics and the HTML report (Bokeh, imported only when a report is written)
    "RunStats": "allcores._stats",
    "WorkerStats": "allcores._stats",
    "Losses": "allcores._stats",
    "report": "allcores._report",
    # data plane (shared memory) and IPC / synchronization primitives
    "share": "allcores.shared",
    "SharedArray": "allcores.shared",
    "Queue": "allcores.sync",
    "Pipe": "allcores.sync",
    "Lock": "allcores.sync",
    "RLock": "allcores.sync",
    "Semaphore": "allcores.sync",
    "Event": "allcores.sync",
    "Barrier": "allcores.sync",
    "Value": "allcores.sync",
    "Counter": "allcores.sync",
    "limit": "allcores.sync",
    # batch tools
    "simulate": "allcores.simulate",
}

__all__ = [
    "PoolClosedError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "__version__",
    "data",
    "dataframe",
    "errors",
    "images",
    *_LAZY,
]


# Public subpackages, imported on first attribute access (``allcores.images.process(...)``).
_SUBMODULES = ("images", "data", "dataframe", "shared", "sync", "backends")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"allcores.{name}")
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'allcores' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


if TYPE_CHECKING:  # let type checkers and IDEs see the lazy names
    # ruff: noqa: F401
    from allcores._engine.cpu import cpu_count
    from allcores._engine.jobs import Failure, MapResults
    from allcores._executor import Executor
    from allcores._oneliners import imap, map, shutdown
    from allcores._pool import AsyncResult, Pool
    from allcores._report import report
    from allcores._stats import Losses, RunStats, WorkerStats
    from allcores.backends import backend
