"""Task functions for the engine tests, importable by name under every start method."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time


def double(x):
    return 2 * x


def add(a, b):
    return a + b


def kw(a, b=0, *, c=0):
    return (a, b, c)


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


class CustomError(Exception):
    pass


def raise_custom(x):
    raise CustomError(f"custom {x}")


class TwoArgError(Exception):
    """Pickles but cannot unpickle (CPython bpo-1692335)."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def raise_two_arg(x):
    raise TwoArgError(x, x)


def return_lock(x):
    return threading.Lock()


def exit_on(x, bad=37):
    if x == bad:
        os._exit(1)
    return x


def sigkill_on(x, bad=37):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def segfault_on(x, bad=37):
    if x == bad:
        ctypes.string_at(0)
    return x


def hang_on(x, bad=3):
    if x == bad:
        threading.Event().wait()  # forever, until the pool stops it
    return x


def allocate_on(x, bad=3, limit=None):
    if x == bad:
        hog = []
        while True:  # without bound; the test's memory ceiling stops it
            hog.append(bytearray(16 << 20))
    return x


def pid(_):
    return os.getpid()


def sleep_then(x, seconds=0.01):
    time.sleep(seconds)
    return x


def spin(n):
    s = 0
    for i in range(n):
        s = (s + i * i) % 1000003
    return s


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


class UnpicklableInWorker:
    """Pickles in the parent, fails to unpickle in the worker."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise RuntimeError("cannot be rebuilt here")


def sleep_once(args):
    """Sleep ``seconds``, having marked ``item`` as run in ``folder``: a second run of the same
    item raises (the file exists), so a map of these proves each item ran exactly once."""
    folder, item, seconds = args
    fd = os.open(os.path.join(folder, f"item-{item}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    time.sleep(seconds)
    return item


def sleep_or_exit(args):
    """Sleep ``seconds`` and return ``item``; kill the worker instead where ``crash``."""
    item, seconds, crash = args
    if crash:
        os._exit(3)
    time.sleep(seconds)
    return item


def identity(x):
    return x


def initializer_sets_state(value):
    import allcores

    allcores.worker.current().state["value"] = value


def read_state(_):
    import allcores

    ctx = allcores.worker.current()
    return ctx.state.get("value"), ctx.id


def failing_initializer():
    raise OSError("initializer could not open its resource")


def limit_memory(extra_bytes):
    """Initializer: cap the worker's address space a little above what it already maps, so an
    unbounded allocation fails safely with MemoryError (whatever the parent had imported)."""
    import resource

    with open("/proc/self/status") as f:
        vm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    cap = vm_kib * 1024 + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


_hoard = []


def grow(x, mib=40):
    """Keep memory alive in the worker, so its resident size climbs with each item."""
    _hoard.append(bytearray(mib << 20))
    return os.getpid()


def announce_then_sleep(x):
    print(f"running {x}", flush=True)
    time.sleep(30)
    return x


def timed(x, seconds=0.05):
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
    time.sleep(seconds)
    return start, time.monotonic()


_kept_arrays = []


def keep_and_sum(arr):
    """Keep a view of the argument (as a careless task might), return its sum now."""
    _kept_arrays.append(arr)
    return float(arr.sum())


def sums_of_kept(_):
    return [float(a.sum()) for a in _kept_arrays]


def read_fifo(path: str) -> int:
    """Block until someone writes to and closes the FIFO at ``path`` (a gate for tests)."""
    with open(path) as f:
        return len(f.read())
