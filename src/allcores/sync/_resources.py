"""Named OS objects (POSIX semaphores and shared-memory files) that any process can reopen.

The standard library's ``multiprocessing`` locks and queues hold anonymous handles, so they can
only reach a child by inheritance. Here every object has a *name* instead, and pickling sends the
name: whichever process unpickles it (a fork, spawn or forkserver worker, a plain
``multiprocessing.Pool`` worker) reopens the same kernel object by that name.

Lifetime: the process that creates an object owns its names and unlinks them when the object is
garbage-collected, closed, or at exit (``multiprocessing.util.Finalize``, which also runs in
``multiprocessing`` children that leave through ``os._exit``). Each name is also registered with
the standard resource tracker, so if the owner is SIGKILLed the tracker unlinks them when the
program ends. Processes that only opened a name never unlink it, so a worker killed with SIGKILL
leaves nothing behind. Mappings and handles already open keep working after the unlink; only new
opens fail, with :class:`NameGoneError`.
"""

from __future__ import annotations

import _multiprocessing
import _posixshmem
import itertools
import mmap
import os
import secrets
from multiprocessing import resource_tracker, util
from typing import Any

# Every name starts with this, so a test (or a person) can tell our objects apart in /dev/shm.
NAME_PREFIX = "allcores-sync-"
# SemLock kinds, as in multiprocessing.synchronize.
RECURSIVE_MUTEX, SEMAPHORE = 0, 1
SEM_VALUE_MAX = _multiprocessing.SemLock.SEM_VALUE_MAX
# Run our finalizers before multiprocessing's own (priority 0) at exit, but after user ones.
FINALIZE_PRIORITY = 10

_counter = itertools.count()


class NameGoneError(FileNotFoundError):
    """A synchronization object was unpickled after its creating process had released it."""


def new_name(kind: str) -> str:
    """A fresh name like ``/allcores-q-1234-7-ab12cd34`` (pid, counter and randomness)."""
    return f"/{NAME_PREFIX}{kind}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


def _gone(name: str, what: str) -> NameGoneError:
    return NameGoneError(
        f"the {what} {name!r} no longer exists: the process that created it closed it or dropped "
        "its last reference (or exited). Keep the object alive in the creating process for as "
        "long as other processes may receive it."
    )


# -- semaphores ----------------------------------------------------------------------------


def create_semlock(kind: int, value: int, maxvalue: int) -> tuple[str, Any]:
    """Create a named semaphore; the caller owns it (see :class:`Owner`)."""
    for _ in range(100):
        name = new_name("s")
        try:
            sem = _multiprocessing.SemLock(kind, value, maxvalue, name, False)
        except FileExistsError:  # pragma: no cover - random names collide almost never
            continue
        return name, sem
    raise FileExistsError("could not find a free semaphore name")  # pragma: no cover


def open_semlock(kind: int, maxvalue: int, name: str) -> Any:
    """Reopen a named semaphore created by another process (or this one)."""
    try:
        return _multiprocessing.SemLock._rebuild(0, kind, maxvalue, name)
    except FileNotFoundError:
        raise _gone(name, "semaphore") from None


# -- shared memory ---------------------------------------------------------------------------


def create_shm(size: int) -> tuple[str, mmap.mmap]:
    """Create a named shared-memory file of ``size`` bytes (zero-filled) and map it."""
    for _ in range(100):
        name = new_name("m")
        try:
            fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        except FileExistsError:  # pragma: no cover
            continue
        try:
            os.ftruncate(fd, size)
            return name, mmap.mmap(fd, size)
        except BaseException:
            _posixshmem.shm_unlink(name)
            raise
        finally:
            os.close(fd)
    raise FileExistsError("could not find a free shared-memory name")  # pragma: no cover


def open_shm(name: str) -> mmap.mmap:
    """Map a named shared-memory file created by another process."""
    try:
        fd = _posixshmem.shm_open(name, os.O_RDWR, mode=0o600)
    except FileNotFoundError:
        raise _gone(name, "shared-memory block") from None
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


# -- ownership --------------------------------------------------------------------------------


def _unlink_all(sems: tuple[str, ...], shms: tuple[str, ...], tracked: bool) -> None:
    for name in sems:
        try:
            _multiprocessing.sem_unlink(name)
        except FileNotFoundError:
            pass
        if tracked:
            resource_tracker.unregister(name, "semaphore")
    for name in shms:
        try:
            _posixshmem.shm_unlink(name)
        except FileNotFoundError:
            pass
        if tracked:
            resource_tracker.unregister(name, "shared_memory")


class Owner:
    """Unlinks a set of names when ``obj`` is collected, on :meth:`release`, or at exit.

    Only in the creating process: ``Finalize`` ignores calls from any other pid, so a forked
    child that inherits the object never unlinks the parent's names.
    """

    def __init__(self, obj: object, sems: list[str], shms: list[str]) -> None:
        # The tracker cleans up after an owner killed by SIGKILL. Registering costs one pipe
        # write (plus starting the tracker process once per program, as multiprocessing does).
        for name in sems:
            resource_tracker.register(name, "semaphore")
        for name in shms:
            resource_tracker.register(name, "shared_memory")
        self._finalizer = util.Finalize(
            obj, _unlink_all, args=(tuple(sems), tuple(shms), True), exitpriority=FINALIZE_PRIORITY
        )

    def release(self) -> None:
        """Unlink now (idempotent)."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.still_active()
