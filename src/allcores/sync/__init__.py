"""Process-safe queues, locks and counters that pool tasks can take as arguments.

The standard library's ``multiprocessing`` Queue, Lock and Semaphore refuse to be pickled
("should only be shared between processes through inheritance"), so they cannot be passed to
``pool.map``. Everything here is built on *named* kernel objects (POSIX semaphores and
shared-memory files): pickling sends the names, and the receiving process reopens them. So they
work as ordinary task arguments, under fork, spawn and forkserver, with ``allcores.Pool``, plain
``multiprocessing.Pool`` and ``ProcessPoolExecutor`` alike::

    import allcores

    done = allcores.Counter()
    lock = allcores.Lock()

    def work(x, done, lock):
        with lock:
            ...                               # one process at a time
        return done.increment()

    with allcores.Pool() as pool:
        pool.starmap(work, [(x, done, lock) for x in range(100)])

    def fetch(url):
        with allcores.limit("downloads", 4):  # at most 4 tasks download at once
            ...

The process that creates an object owns it and removes its kernel objects when it is closed,
collected or at exit; see ``docs/sync.md``.
"""

from allcores.sync._limit import limit
from allcores.sync._primitives import Barrier, Counter, Event, Lock, RLock, Semaphore, Value
from allcores.sync._queue import Connection, Pipe, Queue
from allcores.sync._resources import NameGoneError

__all__ = [
    "Barrier",
    "Connection",
    "Counter",
    "Event",
    "Lock",
    "NameGoneError",
    "Pipe",
    "Queue",
    "RLock",
    "Semaphore",
    "Value",
    "limit",
]
