"""Where a call's items run: this machine's processes (the default), or a Dask or Ray cluster.

Change one argument, not the code::

    allcores.map(fn, items, backend="dask", address="tcp://scheduler:8786")
    allcores.map(fn, items, backend="ray", address="auto")
    allcores.map(fn, items, backend=client)                  # a live distributed.Client
    with allcores.backend("dask", address="tcp://scheduler:8786"):
        allcores.map(fn, items)                              # every call in the block
    # or ALLCORES_BACKEND=dask ALLCORES_ADDRESS=tcp://scheduler:8786 in the environment

Without an address a local cluster is started (``distributed.LocalCluster`` /
``ray.init(num_cpus=workers)``) on first use and closed at exit. Backends are looked up by name
and imported lazily: ``import allcores`` never imports Dask or Ray. What carries over to a
cluster (adaptive chunks, crash isolation, per-item timeouts, error policies, progress, Ctrl-C)
and what does not is in docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from allcores.backends._base import ClusterBackend

__all__ = ["BACKENDS", "ClusterBackend", "backend", "resolve"]

# name -> "module:class", imported on first use.
BACKENDS: dict[str, str] = {
    "dask": "allcores.backends._dask:DaskBackend",
    "ray": "allcores.backends._ray:RayBackend",
}
# Names that mean this machine's process pool.
LOCAL_NAMES = ("processes", "local")
BACKEND_ENV = "ALLCORES_BACKEND"
ADDRESS_ENV = "ALLCORES_ADDRESS"

_current: contextvars.ContextVar[tuple[Any, str | None] | None] = contextvars.ContextVar(
    "allcores_backend", default=None
)
_lock = threading.Lock()
_started: dict[tuple[str, str | None, int | None], ClusterBackend] = {}
_wrapped: dict[int, ClusterBackend] = {}


@contextlib.contextmanager
def backend(name: Any, address: str | None = None) -> Iterator[None]:
    """Run every allcores call in the block on ``name`` ("dask", "ray", a live
    ``distributed.Client``, or "processes"), like ``joblib.parallel_config``.

    It is a context variable: threads and asyncio tasks started inside see it, other threads
    do not. An explicit ``backend=`` argument wins over it.

    >>> import allcores
    >>> with allcores.backend("processes"):
    ...     allcores.map(abs, [-1, 2])
    [1, 2]
    """
    _check_name(name)
    token = _current.set((name, address))
    try:
        yield
    finally:
        _current.reset(token)


def _check_name(name: Any) -> None:
    if name is None or isinstance(name, ClusterBackend) or _is_dask_client(name):
        return
    if not isinstance(name, str) or (name not in BACKENDS and name not in LOCAL_NAMES):
        choices = ", ".join(repr(n) for n in (*LOCAL_NAMES[:1], *BACKENDS))
        raise ValueError(
            f"unknown backend {name!r}: use one of {choices}, or pass a live distributed.Client"
        )


def _is_dask_client(obj: Any) -> bool:
    cls = type(obj)
    return cls.__name__ == "Client" and cls.__module__.startswith("distributed")


def requested(name: Any = None, address: str | None = None) -> tuple[Any, str | None]:
    """The backend a call asked for: its argument, else ``with backend()``, else the
    environment; ``(None, None)`` means this machine's processes."""
    if name is None:
        if address is not None:
            raise ValueError(
                "address= needs backend= too: say which engine runs there (backend='dask' or "
                "backend='ray')"
            )
        current = _current.get()
        if current is not None:
            name, address = current
        else:
            name = os.environ.get(BACKEND_ENV) or None
            address = os.environ.get(ADDRESS_ENV) or None
            if name is None:
                return None, None
    _check_name(name)
    if isinstance(name, str) and name in LOCAL_NAMES:
        if address is not None:
            raise ValueError(f"backend={name!r} runs on this machine and takes no address")
        return None, None
    return name, address


def resolve(name: Any = None, address: str | None = None,
            workers: int | None = None) -> ClusterBackend | None:
    """The cluster backend for a call, or None for this machine's processes.

    Backends started here are kept for later calls (a cluster starts once per process) and
    closed at interpreter exit.
    """
    name, address = requested(name, address)
    if name is None:
        return None
    if isinstance(name, ClusterBackend):
        return name
    if _is_dask_client(name):
        with _lock:
            found = _wrapped.get(id(name))
            if found is None or getattr(found, "client", None) is not name:
                from allcores.backends._dask import DaskBackend

                found = _wrapped[id(name)] = DaskBackend(client=name)
            return found
    key = (name, address, workers if address is None else None)
    with _lock:
        found = _started.get(key)
        if found is None:
            module, _, cls = BACKENDS[name].partition(":")
            factory = getattr(importlib.import_module(module), cls)
            found = factory(address=address, workers=workers)
            _started[key] = found
        return found


def close_all() -> None:
    """Close every backend started here (their local clusters stop); used at exit and by tests."""
    with _lock:
        started = list(_started.values())
        _started.clear()
        _wrapped.clear()
    for b in started:
        b.close()


def cluster_engine(name: Any, address: str | None, workers: int | None, options: Any,
                   local_only: dict[str, Any]) -> Any:
    """A :class:`ClusterEngine` for a facade that asked for a cluster, or None for local.

    ``local_only`` holds the facade's options that only mean something for this machine's
    processes (initializer, start method, worker lifespans, memory caps); set on a cluster
    they are refused, rather than silently ignored.
    """
    cluster = resolve(name, address, workers)
    if cluster is None:
        return None
    given = [k for k, v in local_only.items() if v not in (None, (), "auto")]
    if given:
        raise ValueError(
            f"{', '.join(given)} only apply to this machine's processes, not to "
            f"backend={cluster.name!r}: leave them out, or set up the cluster's workers "
            "with the engine's own tools (a Dask WorkerPlugin, Ray's runtime_env)"
        )
    from allcores.backends._driver import ClusterEngine

    return ClusterEngine(cluster, options)
