"""Starting and stopping worker processes: the OS plumbing, kept out of the manager's logic.

A worker's death is watched through a pidfd (Linux 5.3+, ``os.pidfd_open``), which becomes
readable the moment the process itself exits. ``multiprocessing``'s sentinel is a pipe that the
child holds open, so a task that forks a helper (a library starting a daemon) hands the helper
that pipe too, and the sentinel would fire only when the helper exits, seconds or hours late.
Where pidfds are missing (older kernels, macOS) the sentinel is used, and a worker the manager
kills is reaped with ``waitpid`` right after the kill, so a timeout is reported at once anyway.

A timed-out task may leave processes of its own (a helper it forked, a nested pool's workers,
a helper that called ``setsid``). Before killing a worker for a timeout the manager lists its
descendants (``/proc/<pid>/task/*/children``, or every process's parent in ``/proc`` where that
file is missing) and kills them with it, each with its process group where it leads one. The
workers stay in the caller's process group (so a terminal's job control treats them as the
standard pools' workers); only what a task started is killed. A worker that dies by itself has
already handed its children to init by the time anyone can look: those are left alone.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from allcores._engine.serialization import ByValue
from allcores._engine.worker_main import worker_main

# Linux lets an unprivileged process grow a pipe to 1 MiB (/proc/sys/fs/pipe-max-size): big
# chunks and results then cross in far fewer context switches than through the 64 KiB default.
_F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
# Reads of one worker's pipe per manager turn: a worker that writes as fast as it is read must
# not keep the manager from the others (select reports the rest on the next turn).
READS_PER_TURN = 16


def _grow_pipe(conn: Any) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # a lower pipe-max-size: the default size still works, just slower


@dataclass(frozen=True)
class Initializer:
    """``fn(*args)``, run once in each worker before any task.

    It travels as the arguments of the worker's ``Process``, never through a later pickle, as in
    the standard pools: under fork the child inherits it; under spawn and forkserver
    multiprocessing pickles it while starting the process, which is the one moment when its
    Lock, Event, Value, Array, Queue, Semaphore and manager proxies may be pickled ("shared
    through inheritance"). Every worker the pool ever starts, replacements included, gets it the
    same way. The function itself goes by value (cloudpickle), so a lambda works under spawn.
    """

    fn: Any
    args: tuple


@dataclass(eq=False)
class WorkerHandle:
    """The manager's view of one worker process."""

    slot: int  # 0 .. workers-1; a replacement takes the slot of the worker it replaces
    process: Any
    task_conn: Any  # the manager writes RunChunk / Stop here
    result_conn: Any  # ...and reads ChunkDone here
    in_flight: collections.deque = field(default_factory=collections.deque)  # chunks, FIFO
    # One (chunks, expected seconds or None) per message in its pipe, FIFO: a RunBatch carries
    # several chunks of in_flight, a RunChunk one.
    messages: collections.deque = field(default_factory=collections.deque)
    known_functions: set[int] = field(default_factory=set)
    lent: set[str] = field(default_factory=set)  # recyclable segments it may still hold
    forget: list[int] = field(default_factory=list)
    items_done: int = 0
    last_rss: int | None = None
    retiring: bool = False  # asked to stop after its work (lifespan, memory, close)
    timed_out: Any = None  # the chunk it was killed for, when a timeout killed it
    stopping: bool = False  # Stop was sent
    outbox: bytearray = field(default_factory=bytearray)  # framed messages not yet written
    write_waiting: bool = False  # the pipe was full: waiting for it to become writable
    inbox: bytearray = field(default_factory=bytearray)  # bytes read, not yet a whole message
    pidfd: int | None = None  # readable once the process has exited (Linux 5.3+)
    ready: bool = False  # its start-up is over (messages.Ready): timed items' clocks may run
    # The claim pipe (both ends; the worker holds the read end too): the ids of chunks that may
    # still be taken back from its pipe, oldest first. See Manager._take_back.
    claim_r: Any = None
    claim_w: Any = None
    claims: dict = field(default_factory=dict)  # claim id -> chunk, sent and not yet answered
    since: float = 0.0  # the manager's clock: when its running message started, about

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def sentinel(self) -> int:
        """What becomes readable when the worker exits: its pidfd, else multiprocessing's."""
        return self.pidfd if self.pidfd is not None else self.process.sentinel

    @property
    def label(self) -> str:
        return f"worker {self.slot} (pid {self.pid})"

    def parent_fds(self) -> list[int]:
        fds = [self.task_conn.fileno(), self.result_conn.fileno(), self.claim_r.fileno(),
               self.claim_w.fileno()]
        return fds if self.pidfd is None else [*fds, self.pidfd]


def start_worker(
    context: Any,
    slot: int,
    init: Initializer | None,
    inherited_fds: list[int],
) -> WorkerHandle:
    """Start one worker process with its pipes: tasks, results, and claims (see
    ``Manager._take_back``).

    A failure to start (an initializer argument that cannot be pickled under spawn, no more
    processes allowed) raises here, with nothing left open.

    ``inherited_fds`` are the manager's own descriptors that a forked child must close; without
    that, a sibling holding the write end of another worker's task pipe would keep that worker
    from ever seeing end-of-file when the parent dies.
    """
    task_r, task_w = context.Pipe(duplex=False)
    result_r, result_w = context.Pipe(duplex=False)
    # Read by both the worker and the manager, never blocking (one open file description, so
    # the flag set here holds in the worker too, under every start method).
    claim_r, claim_w = context.Pipe(duplex=False)
    os.set_blocking(claim_r.fileno(), False)
    os.set_blocking(claim_w.fileno(), False)
    _grow_pipe(task_w)
    _grow_pipe(result_w)
    forked = context.get_start_method() == "fork"
    close_fds = ([*inherited_fds, task_w.fileno(), result_r.fileno(), claim_w.fileno()]
                 if forked else [])
    init_fn = None if init is None else ByValue(init.fn)
    init_args = () if init is None else init.args
    process = context.Process(
        target=worker_main,
        args=(slot, task_r, result_w, close_fds, init_fn, init_args, claim_r),
        name=f"allcores-worker-{slot}",
        daemon=False,  # non-daemonic, so a task may start processes of its own (nested pools)
    )
    try:
        with _fork_warning_ignored():
            process.start()
    except BaseException:
        task_w.close()
        result_r.close()
        claim_r.close()
        claim_w.close()
        raise
    finally:
        task_r.close()
        result_w.close()
    # The manager never blocks on a worker: what does not fit in the pipe waits in an outbox,
    # and what arrives is read as far as it goes (a worker stalled mid-message stops nothing).
    os.set_blocking(task_w.fileno(), False)
    os.set_blocking(result_r.fileno(), False)
    return WorkerHandle(slot, process, task_w, result_r, pidfd=_pidfd(process.pid),
                        claim_r=claim_r, claim_w=claim_w)


# Python 3.12+ warns on any fork from a process with threads. The first workers are forked
# before the manager thread exists; a replacement is forked from the manager thread, as
# multiprocessing.Pool does, and the child runs only the worker loop, so the warning says
# nothing true about our forks (and under ``-W error`` it would stop the pool).
_FORK_WARNING_FILTER = (
    "ignore",
    re.compile(r".*multi-threaded, use of fork\(\) may lead to deadlocks", re.IGNORECASE),
    DeprecationWarning,
    None,
    0,
)
_fork_warning_lock = threading.Lock()


@contextlib.contextmanager
def _fork_warning_ignored() -> Iterator[None]:
    """Ignore the fork-with-threads warning while a worker is forked, without touching the
    rest of the process's warning filters.

    ``warnings.catch_warnings`` is no good here: it swaps the whole filter list and puts its
    copy back on exit, so when it runs on the manager thread while the caller's thread enters
    or leaves a ``catch_warnings`` of its own (pytest does, around every test), one of the two
    restores the other's list: the caller's filters are lost, or leak past its block. This
    inserts one filter entry into the list in place and takes that very entry (by identity)
    out again, from the list it went into and from the one in force by then, so whoever
    swapped lists meanwhile finds them as they were.
    """
    entry = _FORK_WARNING_FILTER
    with _fork_warning_lock:
        target = _filter_list()
        target.insert(0, entry)
        warnings._filters_mutated()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with _fork_warning_lock:
            for filters in (target, _filter_list()):
                for index, item in enumerate(filters):
                    if item is entry:
                        del filters[index]
                        break
            warnings._filters_mutated()  # type: ignore[attr-defined]


def _filter_list() -> list[Any]:
    """The filter list in force (a plain list; typeshed calls it a Sequence)."""
    return cast("list[Any]", warnings.filters)


def _pidfd(pid: int | None) -> int | None:
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # a kernel before 5.3, or a seccomp policy that forbids it
        return None


def read_buffer() -> bytearray:
    """A scratch buffer for :func:`read_messages`, one per reading thread.

    ``os.read(fd, PIPE_BYTES)`` would allocate a fresh 1 MiB object on every call (an ``mmap``
    and a page fault, then a shrink), about 12 us against under 1 us for reading into a buffer
    kept for the purpose: with a read per answer, it was the largest single cost of the
    manager's loop."""
    return bytearray(PIPE_BYTES)


def read_messages(handle: WorkerHandle, scratch: bytearray) -> tuple[list[bytes], bool]:
    """The whole messages that have arrived from ``handle``, without ever blocking, and whether
    its pipe is still open. A message cut short stays in ``handle.inbox`` for the next read.
    ``scratch`` comes from :func:`read_buffer` and is used by one thread only."""
    fd = handle.result_conn.fileno()
    open_ = True
    with memoryview(scratch) as view:
        for _ in range(READS_PER_TURN):
            try:
                got = os.readv(fd, [scratch])
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                open_ = False
                break
            if not got:
                open_ = False
                break
            handle.inbox += view[:got]
            if got < len(scratch):
                break  # the pipe is drained; a full read may have left more behind
    messages = []
    while (message := take_frame(handle.inbox)) is not None:
        messages.append(message)
    return messages, open_


def take_frame(buffer: bytearray) -> bytes | None:
    """Cut the first whole message (as framed by ``Connection.send_bytes``) off ``buffer``."""
    if len(buffer) < 4:
        return None
    (size,) = struct.unpack_from("!i", buffer)
    head = 4
    if size == -1:
        if len(buffer) < 12:
            return None
        (size,) = struct.unpack_from("!Q", buffer, 4)
        head = 12
    end = head + size
    if len(buffer) < end:
        return None
    message = bytes(buffer[head:end])
    del buffer[:end]
    return message


def frame(payload: bytes) -> bytes:
    """``payload`` with the length header ``Connection.recv_bytes`` expects on the other end."""
    size = len(payload)
    if size > 0x7FFFFFFF:
        return struct.pack("!i", -1) + struct.pack("!Q", size) + payload
    return struct.pack("!i", size) + payload


def kill(handle: WorkerHandle, sig: int = signal.SIGKILL) -> None:
    try:
        if handle.process.pid is not None:
            os.kill(handle.process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_with_descendants(handle: WorkerHandle) -> None:
    """SIGKILL a worker and every process its task started (see the module docstring)."""
    pid = handle.process.pid
    left = descendants(pid) if pid is not None else []
    kill(handle)
    for child in left:
        try:
            if os.getpgid(child) == child:  # it leads a group (setsid/setpgid): take the group
                os.killpg(child, signal.SIGKILL)
            else:
                os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def descendants(pid: int) -> list[int]:
    """The process ids below ``pid`` (children, their children...), read from /proc."""
    found: list[int] = []
    parents = [pid]
    by_parent: dict[int, list[int]] | None = None
    while parents:
        parent = parents.pop()
        children = _children(parent)
        if children is None:  # no /proc/<pid>/task/*/children: one scan of every process
            if by_parent is None:
                by_parent = _children_by_parent()
            children = by_parent.get(parent, [])
        found.extend(children)
        parents.extend(children)
    return found


def _children(pid: int) -> list[int] | None:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None if not os.path.isdir("/proc/self") else []
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            return None  # the kernel was built without CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return children


def _children_by_parent() -> dict[int, list[int]]:
    by_parent: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return by_parent
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the command name
        except (OSError, ValueError, IndexError):
            continue
        by_parent.setdefault(ppid, []).append(int(name))
    return by_parent


def exit_code(handle: WorkerHandle) -> int | None:
    """The exit status of a worker whose death was just signalled (None if it is not known).

    ``Process.exitcode`` reaps it with ``waitpid(WNOHANG)``, which does not depend on the
    sentinel pipe that a forked helper may still hold; only where that gives nothing yet (the
    forkserver reports the status over a socket) is it waited for, briefly.
    """
    exitcode = handle.process.exitcode
    if exitcode is None:
        handle.process.join(timeout=1.0)
        exitcode = handle.process.exitcode
    return exitcode


def wait_exit(handle: WorkerHandle, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds for the worker to exit; its exit status, or None.

    Waits on the pidfd where there is one: the sentinel that ``Process.join`` waits on may be
    held open by a helper the task forked, and would make every stop wait out the timeout.
    """
    if handle.pidfd is None:
        handle.process.join(timeout)
        return handle.process.exitcode
    import select

    try:
        select.select([handle.pidfd], [], [], timeout)
    except (OSError, ValueError):
        pass
    return handle.process.exitcode


def close_handle(handle: WorkerHandle) -> None:
    for conn in (handle.task_conn, handle.result_conn, handle.claim_r, handle.claim_w):
        if conn is None:
            continue
        try:
            conn.close()
        except OSError:
            pass
    if handle.pidfd is not None:
        try:
            os.close(handle.pidfd)
        except OSError:
            pass
        handle.pidfd = None
    try:
        handle.process.join(timeout=1.0)
        if handle.process.exitcode is None:
            kill(handle)
            handle.process.join(timeout=1.0)
        handle.process.close()
    except (ValueError, AssertionError):
        pass


def available_memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of the machine from /proc/meminfo, or None for each that is
    missing. The manager's dispatch reads it at most every ``MEMORY_RECHECK_SECONDS`` where a
    memory reserve is set: the two fields are found in the raw bytes (~7 us) rather than every
    line parsed (~27 us)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            data = f.read()
    except OSError:
        return None, None
    return _meminfo_bytes(data, b"MemAvailable:"), _meminfo_bytes(data, b"MemTotal:")


def _meminfo_bytes(data: bytes, key: bytes) -> int | None:
    """The value of one /proc/meminfo line (``MemTotal:  24683664 kB``) in bytes, or None."""
    if data.startswith(key):
        start = 0
    else:
        start = data.find(b"\n" + key) + 1  # a whole line's name, not the end of another's
        if start == 0:
            return None
    end = data.find(b"\n", start)
    fields = data[start + len(key) : end if end >= 0 else None].split()
    try:
        return int(fields[0]) * 1024
    except (ValueError, IndexError):
        return None
