"""Task functions for the cluster tests. Registered to pickle by value (cloudpickle), so Dask
and Ray workers need not import this module from the tests folder."""

from __future__ import annotations

import os
import time
from pathlib import Path


def inc(x):
    return x + 1


def crash_on(x, bad=37):
    if x == bad:
        os._exit(1)
    return x


def fail_on(x, bad=3):
    if x == bad:
        raise KeyError(f"bad item {x}")
    return x


def sleep_then(args):
    """(x, seconds, folder): write this process's pid to folder/x.pid, sleep, return x."""
    x, seconds, folder = args
    Path(folder, f"{x}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    return x


def flaky(args):
    """(x, folder): fails with ValueError the first time it runs for x, then returns x."""
    x, folder = args
    marker = Path(folder, f"{x}.tried")
    if not marker.exists():
        marker.write_text("1")
        raise ValueError(f"first attempt at {x}")
    return x


def total(handle_and_slice):
    handle, lo, hi = handle_and_slice
    return float(handle.array[lo:hi].sum())


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to pickle")


def local_pool_state():
    """On a Dask worker: (id, worker pids) of its local allcores pool, or None."""
    from allcores.backends import _remote

    pool = _remote._pool
    if pool is None or not pool._engine.alive:
        return None
    return id(pool), sorted(pool.worker_pids())
