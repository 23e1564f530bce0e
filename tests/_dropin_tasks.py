"""Task functions of the drop-in tests, importable by name under every start method."""

from __future__ import annotations

import os
import threading

# What the initializer received, kept per worker process (the standard idiom: a global).
shared: tuple = ()


def keep(*objects):
    """An initializer that keeps its arguments for the tasks."""
    global shared
    shared = objects


def use_sync_objects(tag):
    """Use every object the initializer got: the parent sees each effect."""
    lock, rlock, semaphore, event, value, array, queue, proxy = shared
    with lock, rlock, semaphore:
        value.value += 1
        array[0] += 1
    proxy.append(tag)
    queue.put((tag, os.getpid()))
    # Wait until the item is in the pipe: this worker is killed next (a crash, a timeout), and a
    # process killed while its queue's feeder thread holds the write lock would leave the queue
    # locked for every later writer (the warning in multiprocessing's "Pipes and Queues").
    queue.close()
    queue.join_thread()
    event.set()
    return os.getpid()


def use_event(tag):
    (event,) = shared
    event.set()
    return os.getpid()


class ReduceRaises:
    """An object whose pickling raises something other than a pickling error."""

    def __reduce__(self):
        raise RuntimeError("this object refuses to be pickled")


def identity(x):
    return x


def make_unpicklable(kind):
    """A result that cannot be pickled: a lock (TypeError) or a ReduceRaises (RuntimeError)."""
    return threading.Lock() if kind == "lock" else ReduceRaises()


def fail_deep(x):
    return _fail_inner(x)


def _fail_inner(x):
    raise ValueError(f"failed on {x}")


def items_then_raise(count):
    """A generator that yields ``count`` items, then raises."""
    yield from range(count)
    raise KeyError("the input ran out badly")


def fail_on(x, bad=2):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def sleep_and_print(seconds, text):
    import time

    time.sleep(seconds)
    print(text, flush=True)


def double(x):
    return 2 * x


def add(a, b):
    return a + b


def kw(a, b=0, *, c=0):
    return (a, b, c)


class HoldsALock(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable(x):
    raise HoldsALock()


def set_event_then_sleep(seconds):
    """Tell the parent this item runs (the initializer's Event), then sleep: a running item."""
    import time

    (event,) = shared
    event.set()
    time.sleep(seconds)
    return seconds


def sleep_then_return(seconds, value):
    import time

    time.sleep(seconds)
    return value
