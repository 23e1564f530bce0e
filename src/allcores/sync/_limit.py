"""``limit(name, n)``: at most ``n`` holders of a name at once, across every process.

A name maps to a directory of lock files (``<tmp>/allcores-<uid>/limits/<name>-<hash>/``) that any
process can open, whatever started it, so no handle has to travel with the task: the name is the
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
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import select
import tempfile
import threading

__all__ = ["limit"]

# Where the lock files live; set it to share (or separate) limits between programs.
LIMIT_DIR_ENV = "ALLCORES_LIMIT_DIR"
_O = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC


def _base_dir() -> str:
    base = os.environ.get(LIMIT_DIR_ENV)
    if not base:
        base = os.path.join(tempfile.gettempdir(), f"allcores-{os.getuid()}", "limits")
    return base


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
        self._dir = _limit_dir(name)
        self._held: list[int] = []
        self._mutex = threading.Lock()

    def __reduce__(self):
        return limit, (self.name, self.n)

    def __repr__(self) -> str:
        return f"allcores.limit({self.name!r}, {self.n})"

    def _path(self, leaf: str) -> str:
        return os.path.join(self._dir, leaf)

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
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
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
            fifo = os.open(wake, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
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
            w = os.open(self._path("wake"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):  # nobody is waiting
                return
            raise
        try:
            os.write(w, b"x")
        except BlockingIOError:  # the FIFO is full of wake-ups already
            pass
        finally:
            os.close(w)

    def __enter__(self) -> limit:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
