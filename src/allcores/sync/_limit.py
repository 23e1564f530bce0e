"""``limit(name, n)``: at most ``n`` holders of a name at once, across every process.

A name maps to a directory of lock files (``$XDG_RUNTIME_DIR/allcores/limits/<name>-<hash>/``, or
``<tmp>/allcores-<uid>/limits/...`` where that variable is not set) that any process of this user
can open, whatever started it, so no handle has to travel with the task: the name is the
handle. Holding the limit means holding an exclusive ``flock`` on one of ``n`` slot files. The
kernel drops a dead process's flocks, so a worker killed mid-task (SIGKILL, a task timeout, the
OOM killer) gives its slot back at once; a semaphore would lose that count for good.

Waiting, without polling::

    try slot-0 .. slot-(n-1) without blocking      (fast path; no waiting at all when free)
    else: flock(gate)                              (waiters queue here, in the kernel)
          open the "wake" FIFO for reading
          loop: try the slots again; if none is free, select() on the FIFO
    release: close the slot file (drops the flock), then write one byte to the FIFO if a
             waiter has it open (non-blocking open fails with ENXIO when nobody waits)

The gate holder opens the FIFO *before* re-trying the slots, so a release can never slip between
its last try and its wait. The files are tiny and reused; they carry no state of their own (the
locks live in the kernel), so a file left by a crashed program is harmless.

On a shared machine the folders are the attack surface (``/tmp`` is everyone's): another user
who creates ``/tmp/allcores-<uid>`` first could plant links (making us create files of their
choice) or hold the slot locks (making us wait forever). So every folder on the way is created
0700 and checked with ``lstat`` (a real folder, owned by us, no group/other write bit) before
use, and every file is opened with ``O_NOFOLLOW``; a folder that fails the check is a
:class:`~allcores.errors.ForeignObjectError`, never used.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import select
import stat
import tempfile
import threading

from allcores.errors import ForeignObjectError

__all__ = ["limit"]

# Where the lock files live; set it to share (or separate) limits between programs.
LIMIT_DIR_ENV = "ALLCORES_LIMIT_DIR"
_O = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def _checked_dir(path: str, *, private: bool = True) -> str:
    """Create ``path`` (0700) if missing, then make sure it is ours: a real folder (not a link),
    owned by this user, with no group/other write bit (``private``: mode 0700, fixed if it
    only lets others read).

    Checked on every acquire (a mkdir and an lstat per level, a few microseconds): a folder
    removed meanwhile is simply made again.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    euid = os.geteuid()
    problem = ""
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder"
    elif st.st_uid != euid:
        problem = f"belongs to uid {st.st_uid}, not to you (uid {euid})"
    elif st.st_mode & 0o022:
        # someone else may have planted files in it already: refuse rather than repair
        problem = f"has mode {stat.S_IMODE(st.st_mode):o}: other users may write in it"
    if problem:
        raise ForeignObjectError(
            f"allcores.limit: the folder {path!r} {problem}, so other users could plant files "
            f"there or hold its locks. Remove it (or chmod 700 it if it is yours), or set "
            f"{LIMIT_DIR_ENV} to a folder of your own."
        )
    if private and st.st_mode & 0o077:
        # ours, readable by others (made 0755 by an earlier version's makedirs): only
        # fix the mode, nobody else could write in it
        os.chmod(path, 0o700)
    return path


def _base_dir() -> str:
    """The folder that holds every limit's folder (created and checked on the way)."""
    base = os.environ.get(LIMIT_DIR_ENV)
    if base:
        if not os.path.isabs(base):
            # A relative path would mean another folder for every process whose working
            # directory differs: the "same" limit would not be shared.
            raise ValueError(
                f"the environment variable {LIMIT_DIR_ENV}={base!r} must be an absolute path "
                f"(e.g. {os.path.abspath(base)!r})"
            )
        # The user's choice: it may be shared by their programs, so only group/other write
        # is refused (that is what would let someone else plant files in it).
        return _checked_dir(base, private=False)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        # per user, 0700, on tmpfs, emptied at logout: the place for such files
        top = _checked_dir(os.path.join(runtime, "allcores"))
    else:
        top = _checked_dir(os.path.join(tempfile.gettempdir(), f"allcores-{os.geteuid()}"))
    return _checked_dir(os.path.join(top, "limits"))


def _limit_dir(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return os.path.join(_base_dir(), f"{safe}-{digest}")


class limit:  # lower case: it reads like a function, ``with allcores.limit("disk", 2):``
    """Allow at most ``n`` holders of ``name`` at once, across every process on this machine.

    Use it inside tasks to bound how many touch a resource together (a disk, a licence, an
    API, memory-hungry steps). Tasks that use the same name share the limit; nothing needs to
    be created up front or passed to the task::

        def convert(path):
            data = decode(path)                   # all workers at once
            with allcores.limit("disk", 2):       # at most 2 tasks write at a time
                write(path + ".out", data)

        allcores.map(convert, paths)

    The scope is every process of this user on this machine that uses the same name (set the
    environment variable ``ALLCORES_LIMIT_DIR`` to give a program its own). Use the same ``n``
    wherever a name is used. A holder that dies releases its place at once.
    """

    def __init__(self, name: str, n: int) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"limit name must be a non-empty string, got {name!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"limit n must be an int >= 1, got {n!r}")
        self.name, self.n = name, n
        self._dir = ""  # found (and checked) on each acquire, in the process that uses it
        self._held: list[int] = []
        self._mutex = threading.Lock()

    def __reduce__(self):
        return limit, (self.name, self.n)

    def __repr__(self) -> str:
        return f"allcores.limit({self.name!r}, {self.n})"

    def _path(self, leaf: str) -> str:
        return os.path.join(self._dir, leaf)

    def _ensure_dir(self) -> None:
        # every level on the way, checked again on each acquire: a few microseconds, and a
        # folder removed meanwhile (rm -rf /tmp/allcores-*) is simply made again
        self._dir = _checked_dir(_limit_dir(self.name))

    def _try_slots(self) -> int | None:
        for i in range(self.n):
            fd = os.open(self._path(f"slot-{i}"), _O, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return fd
        return None

    def acquire(self) -> None:
        """Wait for a free place and take it (``with`` does this for you)."""
        self._ensure_dir()
        fd = self._try_slots()
        if fd is None:
            fd = self._wait()
        with self._mutex:
            self._held.append(fd)

    def _wait(self) -> int:
        wake = self._path("wake")
        try:
            os.mkfifo(wake, 0o600)
        except FileExistsError:
            pass
        gate = os.open(self._path("gate"), _O, 0o600)
        try:
            fcntl.flock(gate, fcntl.LOCK_EX)  # one waiter at a time watches the slots
            # O_RDWR: the FIFO always has a writer (us), so select() blocks instead of seeing EOF
            fifo = os.open(wake, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                while True:
                    fd = self._try_slots()
                    if fd is not None:
                        return fd
                    select.select([fifo], [], [])
                    try:
                        os.read(fifo, 4096)
                    except BlockingIOError:
                        pass
            finally:
                os.close(fifo)
        finally:
            os.close(gate)  # drops the gate flock: the next waiter takes over

    def release(self) -> None:
        """Give the place back and wake a waiter."""
        with self._mutex:
            if not self._held:
                raise RuntimeError(f"{self!r} released more times than acquired")
            fd = self._held.pop()
        os.close(fd)
        try:
            w = os.open(
                self._path("wake"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
            )
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):  # nobody is waiting
                return
            raise
        try:
            os.write(w, b"x")
        except BlockingIOError:  # the FIFO is full of wake-ups already
            pass
        except BrokenPipeError:
            # The waiter that had the FIFO open found a free slot and closed it between our
            # open and our write (the flake seen in test_limit_bounds_concurrency_across_
            # processes): nobody is waiting any more, so there is nobody to wake.
            pass
        finally:
            os.close(w)

    def __enter__(self) -> limit:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
