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

Other users (docs/security.md). A released name can be created again by anyone: another user,
another container sharing ``/dev/shm``, or (pid reuse) another of our own processes. So a name
is ``/allcores-sync-<kind>-<uid>-<pidns>-<pid>-<n>-<random>``, every reopen checks that the
object is owned by this user with no group/other permission bit, and each shared-memory block
ends with a 16-byte random secret that travels in the pickled handle and must match: a
mismatch is a :class:`~allcores.errors.ForeignObjectError`, never data (a Queue's ring holds
pickles: reading a stranger's would run their code).
"""

from __future__ import annotations

import _multiprocessing
import _posixshmem
import hmac
import itertools
import mmap
import os
import secrets
import threading
import time
from multiprocessing import resource_tracker, util
from typing import Any

from allcores._engine.shm import check_owner, foreign_error, identity

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


# Bytes of the random secret at the end of every shared-memory block (see the module docstring).
SECRET_BYTES = 16


def new_name(kind: str) -> str:
    """A fresh name like ``/allcores-sync-m-1000-effffffc-1234-7-ab12cd34``: kind, user, pid
    namespace and pid (what a sweep needs to judge it), counter and randomness."""
    return (
        f"/{NAME_PREFIX}{kind}-{identity()}-{os.getpid()}-{next(_counter)}-"
        f"{secrets.token_hex(4)}"
    )


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
    """Reopen a named semaphore created by another process (or this one), if it is ours.

    sem_open gives no fd to fstat, so the file behind it is checked with lstat right after
    the open: a semaphore someone else created at a released name is refused (its file is
    theirs, or open to others). A stranger cannot swap the file in between: /dev/shm is
    sticky and the names are random, so only its owner could remove and recreate it.
    """
    try:
        sem = _multiprocessing.SemLock._rebuild(0, kind, maxvalue, name)
    except FileNotFoundError:
        raise _gone(name, "semaphore") from None
    try:
        st = os.lstat(f"/dev/shm/sem.{name[1:]}")
    except FileNotFoundError:
        raise _gone(name, "semaphore") from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not _is_regular(st):
        raise foreign_error(name, "semaphore", st)
    return sem


def _is_regular(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


# -- shared memory ---------------------------------------------------------------------------


def create_shm(size: int) -> tuple[str, mmap.mmap, bytes]:
    """Create a named shared-memory file of ``size`` bytes (zero-filled) and map it.

    Returns the name, the map (``size`` bytes, then the secret) and the random secret that a
    handle must carry to reopen it (:func:`open_shm`).
    """
    secret = secrets.token_bytes(SECRET_BYTES)
    for _ in range(100):
        name = new_name("m")
        try:
            fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        except FileExistsError:  # pragma: no cover
            continue
        try:
            os.ftruncate(fd, size + SECRET_BYTES)
            mm = mmap.mmap(fd, size + SECRET_BYTES)
            mm[size:] = secret
            return name, mm, secret
        except BaseException:
            _posixshmem.shm_unlink(name)
            raise
        finally:
            os.close(fd)
    raise FileExistsError("could not find a free shared-memory name")  # pragma: no cover


def open_shm(name: str, secret: bytes) -> mmap.mmap:
    """Map a named shared-memory file created by another process, if it is the one the
    handle names: owned by this user, private, and ending with ``secret``."""
    try:
        fd = _posixshmem.shm_open(name, os.O_RDWR, mode=0o600)  # glibc adds O_NOFOLLOW
    except FileNotFoundError:
        raise _gone(name, "shared-memory block") from None
    try:
        size = check_owner(fd, name, "shared-memory block").st_size
        if size < SECRET_BYTES:
            raise foreign_error(name, "shared-memory block")
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    if not hmac.compare_digest(mm[size - SECRET_BYTES:], secret):
        mm.close()
        raise foreign_error(name, "shared-memory block")
    return mm


# -- ownership --------------------------------------------------------------------------------


def _unlink_all(sems: tuple[str, ...], shms: tuple[str, ...], tracked: bool = True) -> None:
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

    def __init__(self, obj: object, sems: list[str], shms: list[str], tracked: bool = True
                 ) -> None:
        # The tracker cleans up after an owner killed by SIGKILL. Registering costs one pipe
        # write (plus starting the tracker process once per program, as multiprocessing does).
        if tracked:
            for name in sems:
                resource_tracker.register(name, "semaphore")
            for name in shms:
                resource_tracker.register(name, "shared_memory")
        self._finalizer = util.Finalize(
            obj, _unlink_all, args=(tuple(sems), tuple(shms), tracked),
            exitpriority=FINALIZE_PRIORITY,
        )

    def release(self) -> None:
        """Unlink now (idempotent)."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.still_active()


# -- waiting without lost wake-ups ---------------------------------------------------------------
#
# A shared "wake" semaphore posted once per waiter is not enough between processes: a waiter
# that arrives later can take a post meant for one that has not woken yet, which then sleeps
# through a change it was waiting for. So every waiting thread has its *own* named semaphore,
# and an object keeps a list of its sleepers' names in shared memory: a change posts exactly the
# sleepers that were on the list. A post that arrives after its waiter gave up (timeout) only
# causes one spurious wake-up later, which every wait loop tolerates by re-checking its state.

# One slot of a wait list: a semaphore name, NUL-padded. Names are about 60 bytes (user, pid
# namespace, pid, counter, randomness); 96 leaves room for long counters and uids.
NAME_BYTES = 96


class _Me(threading.local):
    pid = -1
    name = ""
    sem: Any = None
    holder: Any = None


class _Holder:  # owns one thread's private semaphore; unlinked when the thread's locals go
    pass


_me = _Me()
_opened: dict[bytes, Any] = {}  # private semaphores of other threads, opened by name
_MAX_OPENED = 4096
_WAITER_KIND = "w"  # names: /allcores-sync-w-<pid>-<n>-<random>


def my_semaphore() -> tuple[bytes, Any]:
    """This thread's private wake semaphore (created on first use, per process and thread).

    A pool worker is often ended with SIGTERM (``Pool.terminate``, ``with Pool()``), which runs no
    clean-up; so these are not given to the resource tracker (it would warn at exit) but carry
    their pid in the name, and :func:`sweep_dead_waiters` removes those of dead processes.
    """
    if _me.pid != os.getpid():  # first use in this thread, or inherited through fork
        if _me.pid == -1 and threading.current_thread() is threading.main_thread():
            sweep_dead_waiters()
            util.Finalize(None, sweep_dead_waiters, exitpriority=FINALIZE_PRIORITY - 1)
        for _ in range(100):
            name = new_name(_WAITER_KIND)
            try:
                sem = _multiprocessing.SemLock(SEMAPHORE, 0, SEM_VALUE_MAX, name, False)
                break
            except FileExistsError:  # pragma: no cover
                continue
        holder = _Holder()
        Owner(holder, [name], [], tracked=False)
        _me.pid, _me.name, _me.sem, _me.holder = os.getpid(), name, sem, holder
    return _me.name.encode(), _me.sem


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    try:  # a killed child that nobody has reaped yet is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def sweep_dead_waiters() -> int:
    """Unlink what dead processes left that no tracker knows of; return how many.

    That is their private wake semaphores, and the spill files of a ``Queue`` whose owner was
    SIGKILLed (an unread item too big for the ring, in a file named after the ring), once the
    ring itself is gone: nobody can send that queue any more, and a holder still reading it
    would have read the item by now or never will. Only this user's names, from this pid
    namespace (where a pid means something); another user's leftovers are not ours to judge,
    and an error on one never stops the sweep (or the wait that triggered it).
    """
    me = f"{NAME_PREFIX}{{kind}}-{identity()}-"
    waiters = "sem." + me.format(kind=_WAITER_KIND)
    rings = me.format(kind="m")
    removed = 0
    try:
        entries = os.listdir("/dev/shm")
    except OSError:  # pragma: no cover - no /dev/shm on this system
        return 0
    for entry in entries:
        if entry.startswith(waiters):
            prefix, spill = waiters, False
        elif entry.startswith(rings) and _SPILL_MARK in entry:
            prefix, spill = rings, True
        else:
            continue
        try:
            pid = int(entry[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if spill:
                if os.path.exists("/dev/shm/" + entry.split(_SPILL_MARK, 1)[0]):
                    continue  # the ring is still there: its owner's tracker has not run yet
                os.unlink("/dev/shm/" + entry)
            else:
                _multiprocessing.sem_unlink("/" + entry[len("sem."):])
            removed += 1
        except OSError:
            pass
    return removed


# A spill file is named <ring name>-x<a name of kind "x" without its leading "/allcores-">
# (see Queue._spill): this marks where the ring's name ends.
_SPILL_MARK = f"-x{NAME_PREFIX[len('allcores-'):]}x-"


def _post(name: bytes) -> None:
    sem = _opened.get(name)
    if sem is None:
        if len(_opened) > _MAX_OPENED:
            _opened.clear()
        try:
            sem = _multiprocessing.SemLock._rebuild(0, SEMAPHORE, SEM_VALUE_MAX, name.decode())
        except FileNotFoundError:  # that waiter's thread or process is gone
            return
        _opened[name] = sem
    sem.release()


class WaitList:
    """The names of the threads sleeping on one condition, in shared memory (mutex held).

    Layout: ``[count q][capacity x NAME_BYTES]``.
    """

    def __init__(self, buf: Any, offset: int, capacity: int) -> None:
        self._mv = memoryview(buf)[offset:offset + self.size(capacity)]
        self._count = self._mv[:8].cast("q")
        self._cap = capacity

    @staticmethod
    def size(capacity: int) -> int:
        return 8 + capacity * NAME_BYTES

    def _slot(self, i: int) -> memoryview:
        start = 8 + i * NAME_BYTES
        return self._mv[start:start + NAME_BYTES]

    def _find(self, name: bytes) -> int:
        padded = name.ljust(NAME_BYTES, b"\0")
        for i in range(self._count[0]):
            if self._slot(i) == padded:
                return i
        return -1

    def add(self, name: bytes) -> None:
        if len(name) > NAME_BYTES:  # pragma: no cover - names are far shorter
            raise RuntimeError(f"semaphore name {name!r} is longer than {NAME_BYTES} bytes")
        if self._find(name) >= 0:
            return
        n = self._count[0]
        if n >= self._cap:
            raise RuntimeError(
                f"more than {self._cap} threads are waiting on one allcores.sync object at once"
            )
        self._slot(n)[:] = name.ljust(NAME_BYTES, b"\0")
        self._count[0] = n + 1

    def remove(self, name: bytes) -> None:
        i = self._find(name)
        if i >= 0:
            last = self._count[0] - 1
            if i != last:
                self._slot(i)[:] = self._slot(last)
            self._count[0] = last

    def wake_all(self) -> None:
        n = self._count[0]
        if not n:
            return
        names = [bytes(self._slot(i)).rstrip(b"\0") for i in range(n)]
        self._count[0] = 0
        for name in names:
            _post(name)


# An untimed wait is made of timed waits this long. A semaphore wait in C checks for Python
# signal handlers only when the kernel interrupts it; a Ctrl-C that lands between the
# interpreter's last check and the start of the wait would otherwise be held until the
# semaphore is posted, which may be never (seen in CI: a blocked Event.wait ignored its
# SIGINT). With slices, the pending KeyboardInterrupt is raised within one slice.
UNTIMED_SLICE_S = 0.25


def acquire_interruptibly(sem: Any, block: bool = True, timeout: float | None = None) -> bool:
    """``sem.acquire(block, timeout)``, but an untimed wait still answers Ctrl-C."""
    if not block or timeout is not None:
        return sem.acquire(block, timeout)
    while not sem.acquire(True, UNTIMED_SLICE_S):
        pass
    return True


def sleep_on(sem: Any, deadline: float | None) -> bool:
    """Wait for a post on ``sem`` (no mutex held); False if ``deadline`` passed first."""
    if deadline is None:
        return acquire_interruptibly(sem)
    remaining = deadline - time.monotonic()
    return remaining > 0 and sem.acquire(True, remaining)


# -- internal mutexes that survive a holder's death ------------------------------------------------

# A mutex held this long makes a waiter check whether its holder is still alive. Internal
# critical sections last microseconds, so this only fires when something is wrong.
LOCK_CHECK_S = 1.0
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def recovery_name(lock_name: str) -> str:
    """The name of the semaphore that serialises recoveries of the mutex ``lock_name``."""
    return lock_name + "r"


class RobustMutex:
    """The internal mutex of a shared object: a binary semaphore, plus the holder's pid in a
    shared-memory slot so that a waiter can take over from a holder that died.

    Pool workers get killed (task timeouts, SIGKILL, the OOM killer), sometimes inside a
    ``Counter.increment`` or a ``Queue.get``. A plain semaphore would then stay locked forever
    and hang every other process. Here a waiter that has waited ``LOCK_CHECK_S`` looks at the
    holder's pid; if that process is gone, it takes the mutex over (one recoverer at a time,
    under a second semaphore), runs ``repair`` to make the shared state consistent, and goes on.
    (One window is left: a process killed between taking the semaphore and writing its pid,
    a few bytecodes, leaves the previous holder's pid there; if that process is alive, the
    mutex stays held.)
    """

    def __init__(self, sem: Any, recovery: Any, holder: Any, slot: int,
                 repair: Any = None) -> None:
        self._sem, self._recovery = sem, recovery
        self._holder, self._slot = holder, slot  # holder: a memoryview cast to "q"
        self.repair = repair

    def acquire(self) -> bool:
        if self._sem.acquire(True, LOCK_CHECK_S):
            self._holder[self._slot] = _pid[0]
            return True
        self._acquire_slow()
        return True

    def release(self) -> None:
        # The holder slot is left as it is: clearing it before the release would open a window
        # in which a killed process leaves the mutex held with no pid to check. A stale pid is
        # harmless: the next holder overwrites it right after acquiring.
        self._sem.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _acquire_slow(self) -> None:
        me = _pid[0]
        while True:
            holder = self._holder[self._slot]
            if holder and holder != me and not _pid_alive(holder):
                with self._recovery:
                    if self._sem.acquire(False):  # released meanwhile: ours the normal way
                        self._holder[self._slot] = me
                        return
                    if self._holder[self._slot] == holder:  # still the dead one's: take over
                        self._holder[self._slot] = me
                        if self.repair is not None:
                            self.repair()
                        return
            if self._sem.acquire(True, LOCK_CHECK_S):
                self._holder[self._slot] = me
                return


def create_mutex() -> tuple[str, Any, Any, list[str]]:
    """A new mutex semaphore and its recovery semaphore: (name, sem, recovery sem, all names)."""
    name, sem = create_semlock(SEMAPHORE, 1, 1)
    rname = recovery_name(name)
    recovery = _multiprocessing.SemLock(SEMAPHORE, 1, 1, rname, False)
    return name, sem, recovery, [name, rname]


def open_mutex(name: str) -> tuple[Any, Any]:
    return open_semlock(SEMAPHORE, 1, name), open_semlock(SEMAPHORE, 1, recovery_name(name))
