"""Lock, RLock, Semaphore, Event, Barrier, Value and Counter over named OS objects.

Each object pickles as the names of its semaphores and shared-memory block, so it can be passed
to a pool task as an ordinary argument; the receiving process reopens the same kernel objects.
Within one process, unpickling the same object twice gives back the same Python object (a
per-process registry), so an ``RLock`` held by a thread is recognised as held when it arrives
again inside another argument.

Waiting (Event, Barrier) keeps the state in shared memory under a mutex semaphore, and a list of
the sleeping threads' private semaphores (see ``_resources.WaitList``): a change posts exactly
the threads that were sleeping, so no waiter can take another's wake-up. Every waiter re-checks
the state under the mutex, so a late post (to a waiter that timed out) costs one spurious
wake-up, never a wrong answer.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from time import monotonic
from typing import Any

from allcores.sync._resources import (
    RECURSIVE_MUTEX,
    SEM_VALUE_MAX,
    SEMAPHORE,
    Owner,
    RobustMutex,
    WaitList,
    acquire_interruptibly,
    create_mutex,
    create_semlock,
    create_shm,
    my_semaphore,
    open_mutex,
    open_semlock,
    open_shm,
    sleep_on,
)

__all__ = ["Barrier", "Counter", "Event", "Lock", "RLock", "Semaphore", "Value"]

# name -> live object, per process: unpickling a handle we already hold returns the same object.
_registry: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
# every RLock of this process, so a forked child can forget the parent's ownership counts
_rlocks: weakref.WeakSet[RLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child inherits the parent's recursion count and thread id; without this reset a
    # child could believe it holds an RLock that the parent's thread held at fork time.
    for r in list(_rlocks):
        r._sem._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _rebuild(cls: type, key: str, state: tuple) -> Any:
    obj = _registry.get(key)
    if obj is None:
        obj = cls.__new__(cls)
        obj._attach(*state)
        _registry[key] = obj
    return obj


# -- semaphore-only objects -----------------------------------------------------------------


class _SemBase:
    _kind = SEMAPHORE
    _sem: Any
    _name: str
    _maxvalue: int

    def _create(self, value: int, maxvalue: int) -> None:
        self._name, sem = create_semlock(self._kind, value, maxvalue)
        self._sem = sem
        self._maxvalue = maxvalue
        self._owner: Owner | None = Owner(self, [self._name], [])
        _registry[self._name] = self

    def _attach(self, name: str, maxvalue: int) -> None:
        self._name, self._maxvalue, self._owner = name, maxvalue, None
        self._sem = open_semlock(self._kind, maxvalue, name)

    def __reduce__(self):
        return _rebuild, (type(self), self._name, (self._name, self._maxvalue))

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Acquire; with ``block=False`` or a ``timeout`` return whether it was acquired."""
        return acquire_interruptibly(self._sem, block, timeout)

    def release(self) -> None:
        self._sem.release()

    def __enter__(self) -> bool:
        return acquire_interruptibly(self._sem)

    def __exit__(self, *exc: object) -> None:
        self._sem.release()

    def __repr__(self) -> str:
        return f"<allcores.{type(self).__name__} {self._name}>"


class Lock(_SemBase):
    """A process-wide lock that can be passed to pool tasks as an argument.

    Like ``multiprocessing.Lock``, but it pickles, so it reaches a task through
    ``pool.map(f, ...)`` under fork, spawn and forkserver::

        lock = allcores.Lock()

        def append_line(path, line, lock):
            with lock:                      # one writer at a time, across processes
                with open(path, "a") as f:
                    f.write(line + "\\n")

        pool.starmap(append_line, [(path, s, lock) for s in lines])
    """

    def __init__(self) -> None:
        self._create(1, 1)


class RLock(_SemBase):
    """A re-entrant process-wide lock: the holding thread may acquire it again.

    Example::

        rlock = allcores.RLock()
        with rlock:
            with rlock:      # same thread: does not deadlock
                ...
    """

    _kind = RECURSIVE_MUTEX

    def __init__(self) -> None:
        self._create(1, 1)
        _rlocks.add(self)

    def _attach(self, name: str, maxvalue: int) -> None:
        super()._attach(name, maxvalue)
        _rlocks.add(self)


class Semaphore(_SemBase):
    """A counting semaphore shared by processes: at most ``value`` holders at once.

    Example::

        slots = allcores.Semaphore(2)

        def fetch(url, slots):
            with slots:                      # at most 2 downloads at a time, over all workers
                return download(url)
    """

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError(f"Semaphore value must be >= 0, got {value}")
        self._create(value, SEM_VALUE_MAX)

    def release(self, n: int = 1) -> None:
        """Release ``n`` times (wakes up to ``n`` waiters)."""
        for _ in range(n):
            self._sem.release()

    def get_value(self) -> int:
        """The current count (a snapshot: another process may change it at once)."""
        return self._sem._get_value()

    def __repr__(self) -> str:
        return f"<allcores.Semaphore {self._name} value={self.get_value()}>"


# -- objects with state in shared memory ------------------------------------------------------


class _ShmBase:
    """State in a small shared-memory block (int64 slots, then an optional wait list) guarded by
    a mutex semaphore."""

    _SLOTS = 4
    _name: str
    _lock: Any
    _wl: WaitList | None

    def _create(self, waiters: int = 0, extra_bytes: int = 0) -> None:
        # one more slot than the class uses: the mutex holder's pid
        size = 8 * (self._SLOTS + 1) + (WaitList.size(waiters) if waiters else 0) + extra_bytes
        self._shm_name, self._mm, self._secret = create_shm(size)
        self._lock_name, sem, recovery, names = create_mutex()
        self._waiters = waiters
        self._owner: Owner | None = Owner(self, names, [self._shm_name])
        self._map(sem, recovery)
        _registry[self._shm_name] = self

    def _attach(self, shm_name: str, lock_name: str, waiters: int, secret: bytes,
                *extra: Any) -> None:
        self._shm_name, self._lock_name, self._waiters = shm_name, lock_name, waiters
        self._secret = secret
        self._mm = open_shm(shm_name, secret)  # checks owner, mode and secret
        self._owner = None
        self._map(*open_mutex(lock_name))
        self._attach_extra(*extra)

    def _map(self, sem: Any, recovery: Any) -> None:
        top = 8 * (self._SLOTS + 1)
        self._h = memoryview(self._mm)[:top].cast("q")
        self._lock = RobustMutex(sem, recovery, self._h, self._SLOTS)
        self._wl = WaitList(self._mm, top, self._waiters) if self._waiters else None
        self._extra_offset = top + (WaitList.size(self._waiters) if self._waiters else 0)

    def _attach_extra(self) -> None:
        pass

    def _state(self) -> tuple:
        # the secret travels with the handle: the block must end with it to be reopened
        return (self._shm_name, self._lock_name, self._waiters, self._secret)

    def __reduce__(self):
        return _rebuild, (type(self), self._shm_name, self._state())

    def __repr__(self) -> str:
        return f"<allcores.{type(self).__name__} {self._shm_name}>"


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else monotonic() + max(0.0, timeout)


# how many threads (over all processes) may wait on one Event at once
EVENT_MAX_WAITERS = 128


class Event(_ShmBase):
    """A flag that processes can wait on, like ``multiprocessing.Event``, passable to tasks.

    Example (stop every worker early once one finds the answer)::

        found = allcores.Event()

        def search(chunk, found):
            for x in chunk:
                if found.is_set():
                    return None           # someone else already found it
                if is_answer(x):
                    found.set()
                    return x
    """

    _SLOTS = 1
    _FLAG = 0

    def __init__(self) -> None:
        self._create(waiters=EVENT_MAX_WAITERS)

    def is_set(self) -> bool:
        return bool(self._h[self._FLAG])

    def set(self) -> None:
        """Set the flag and wake every process waiting in :meth:`wait`."""
        with self._lock:
            self._h[self._FLAG] = 1
            self._wl.wake_all()

    def clear(self) -> None:
        with self._lock:
            self._h[self._FLAG] = 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds pass; return the flag."""
        deadline = _deadline(timeout)
        me, sem = my_semaphore()
        wl = self._wl
        while True:
            with self._lock:
                if self._h[self._FLAG]:
                    wl.remove(me)
                    return True
                wl.add(me)
            if not sleep_on(sem, deadline):
                with self._lock:
                    wl.remove(me)
                    return bool(self._h[self._FLAG])


class Barrier(_ShmBase):
    """``parties`` processes wait until all have arrived, like ``threading.Barrier``.

    ``wait()`` returns an index from 0 to ``parties - 1`` (different for each caller); it raises
    ``threading.BrokenBarrierError`` if the barrier is aborted, reset while waiting, or a waiter
    times out (which breaks it for everyone, as in the standard library).

    Example (every worker loads its shard before any starts the next phase)::

        ready = allcores.Barrier(4)

        def phase(shard, ready):
            data = load(shard)
            ready.wait(timeout=60)
            return compute(data)
    """

    _SLOTS = 5
    _COUNT, _GEN, _BROKEN, _RESET_GEN, _PARTIES = range(5)

    def __init__(self, parties: int) -> None:
        if parties < 1:
            raise ValueError(f"Barrier needs parties >= 1, got {parties}")
        self._create(waiters=max(parties, EVENT_MAX_WAITERS))
        self._h[self._PARTIES] = parties

    @property
    def parties(self) -> int:
        return self._h[self._PARTIES]

    @property
    def n_waiting(self) -> int:
        return self._h[self._COUNT]

    @property
    def broken(self) -> bool:
        return bool(self._h[self._BROKEN])

    def wait(self, timeout: float | None = None) -> int:
        deadline = _deadline(timeout)
        h, wl = self._h, self._wl
        me, sem = my_semaphore()
        with self._lock:
            if h[self._BROKEN]:
                raise threading.BrokenBarrierError
            gen = h[self._GEN]
            index = h[self._COUNT]
            h[self._COUNT] = index + 1
            if index + 1 == h[self._PARTIES]:  # last to arrive: release everyone
                h[self._COUNT] = 0
                h[self._GEN] = gen + 1
                wl.wake_all()
                return index
            wl.add(me)
        while True:
            woke = sleep_on(sem, deadline)
            with self._lock:
                if h[self._RESET_GEN] == gen + 1 or (h[self._BROKEN] and h[self._GEN] == gen):
                    wl.remove(me)
                    raise threading.BrokenBarrierError
                if h[self._GEN] != gen:
                    wl.remove(me)
                    return index
                if not woke:  # timed out: break the barrier for everyone, as threading does
                    h[self._BROKEN] = 1
                    h[self._COUNT] = 0
                    wl.remove(me)
                    wl.wake_all()
                    raise threading.BrokenBarrierError
                wl.add(me)  # a stale wake-up: wait again

    def abort(self) -> None:
        """Break the barrier: current and future waiters get ``BrokenBarrierError``."""
        with self._lock:
            self._h[self._BROKEN] = 1
            self._h[self._COUNT] = 0
            self._wl.wake_all()

    def reset(self) -> None:
        """Return to the initial state; processes waiting now get ``BrokenBarrierError``."""
        h = self._h
        with self._lock:
            if h[self._COUNT]:
                h[self._RESET_GEN] = h[self._GEN] + 1
                h[self._GEN] += 1
            h[self._COUNT] = 0
            h[self._BROKEN] = 0
            self._wl.wake_all()


# typecode -> struct size; the single-character codes of the array/struct modules
_TYPECODES = "bBhHiIlLqQfd?c"


class Value(_ShmBase):
    """One number in shared memory with a lock, like ``multiprocessing.Value``, passable to tasks.

    Reading or writing ``.value`` is atomic on its own; a read-modify-write needs the lock::

        best = allcores.Value("d", float("inf"))

        def evaluate(params, best):
            score = loss(params)
            with best.get_lock():
                if score < best.value:
                    best.value = score

    ``typecode`` is one of ``b B h H i I l L q Q f d ? c`` (as in the ``array`` module).
    For a counter, :class:`Counter` is simpler and faster.
    """

    _SLOTS = 1

    def __init__(self, typecode: str, value: Any = 0) -> None:
        if not isinstance(typecode, str) or len(typecode) != 1 or typecode not in _TYPECODES:
            raise ValueError(
                f"unsupported typecode {typecode!r}: use one of {' '.join(_TYPECODES)} "
                "(for example 'i' for int, 'd' for float)"
            )
        self._create(extra_bytes=16)
        self._typecode = typecode
        self._rlock = RLock()
        self._view = self._value_view()
        self._view[0] = value

    def _state(self) -> tuple:
        return (*super()._state(), self._typecode, self._rlock)

    def _attach_extra(self, typecode: str, rlock: RLock) -> None:
        self._typecode, self._rlock = typecode, rlock
        self._view = self._value_view()

    def _value_view(self) -> memoryview:
        start = self._extra_offset
        return memoryview(self._mm)[start:start + struct.calcsize(self._typecode)].cast(
            self._typecode
        )

    @property
    def typecode(self) -> str:
        return self._typecode

    @property
    def value(self) -> Any:
        with self._rlock:
            return self._view[0]

    @value.setter
    def value(self, new: Any) -> None:
        with self._rlock:
            self._view[0] = new

    def get_lock(self) -> RLock:
        """The lock to hold around a read-modify-write of ``.value`` (re-entrant)."""
        return self._rlock

    def __repr__(self) -> str:
        return f"<allcores.Value {self._typecode!r} {self.value!r}>"


class Counter(_ShmBase):
    """A shared integer with an atomic :meth:`increment`, passable to tasks.

    Example (count progress, or hand out unique ids, across workers)::

        done = allcores.Counter()

        def work(item, done):
            result = process(item)
            n = done.increment()          # atomic; returns the new total
            if n % 1000 == 0:
                print(f"{n} items done")
            return result
    """

    _SLOTS = 1

    def __init__(self, initial: int = 0) -> None:
        self._create()
        self._h[0] = initial

    def increment(self, n: int = 1) -> int:
        """Add ``n`` (may be negative) atomically and return the new value."""
        self._lock.acquire()
        try:
            v = self._h[0] + n
            self._h[0] = v
        finally:
            self._lock.release()
        return v

    @property
    def value(self) -> int:
        return self._h[0]  # one aligned 8-byte load: atomic on every platform CPython runs on

    def __repr__(self) -> str:
        return f"<allcores.Counter {self.value}>"
