"""Starting and stopping worker processes: the OS plumbing, kept out of the manager's logic."""

from __future__ import annotations

import collections
import os
import signal
import struct
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from allcores._engine.worker_main import worker_main

# Linux lets an unprivileged process grow a pipe to 1 MiB (/proc/sys/fs/pipe-max-size): big
# chunks and results then cross in far fewer context switches than through the 64 KiB default.
_F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20


def _grow_pipe(conn: Any) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # a lower pipe-max-size: the default size still works, just slower


@dataclass(eq=False)
class WorkerHandle:
    """The manager's view of one worker process."""

    slot: int  # 0 .. workers-1; a replacement takes the slot of the worker it replaces
    process: Any
    task_conn: Any  # the manager writes RunChunk / Stop here
    result_conn: Any  # ...and reads ChunkDone here
    in_flight: collections.deque = field(default_factory=collections.deque)  # chunks, FIFO
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

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    @property
    def label(self) -> str:
        return f"worker {self.slot} (pid {self.pid})"

    def parent_fds(self) -> list[int]:
        return [self.task_conn.fileno(), self.result_conn.fileno()]


def start_worker(
    context: Any,
    slot: int,
    init_blob: bytes | None,
    inherited_fds: list[int],
) -> WorkerHandle:
    """Start one worker process with its two pipes.

    ``inherited_fds`` are the manager's own descriptors that a forked child must close; without
    that, a sibling holding the write end of another worker's task pipe would keep that worker
    from ever seeing end-of-file when the parent dies.
    """
    task_r, task_w = context.Pipe(duplex=False)
    result_r, result_w = context.Pipe(duplex=False)
    _grow_pipe(task_w)
    _grow_pipe(result_w)
    forked = context.get_start_method() == "fork"
    close_fds = [*inherited_fds, task_w.fileno(), result_r.fileno()] if forked else []
    process = context.Process(
        target=worker_main,
        args=(slot, task_r, result_w, close_fds, init_blob),
        name=f"allcores-worker-{slot}",
        daemon=False,  # non-daemonic, so a task may start processes of its own (nested pools)
    )
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns on any fork from a process with threads. The first workers are
            # forked before the manager thread exists; a replacement is forked from the manager
            # thread, as multiprocessing.Pool does, and the child runs only the worker loop.
            warnings.filterwarnings(
                "ignore", message=r".*multi-threaded, use of fork\(\) may lead to deadlocks",
                category=DeprecationWarning,
            )
            process.start()
    finally:
        task_r.close()
        result_w.close()
    # The manager never blocks on a worker: what does not fit in the pipe waits in an outbox.
    os.set_blocking(task_w.fileno(), False)
    return WorkerHandle(slot, process, task_w, result_r)


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


def close_handle(handle: WorkerHandle) -> None:
    for conn in (handle.task_conn, handle.result_conn):
        try:
            conn.close()
        except OSError:
            pass
    try:
        handle.process.join(timeout=1.0)
        if handle.process.exitcode is None:
            kill(handle)
            handle.process.join(timeout=1.0)
        handle.process.close()
    except (ValueError, AssertionError):
        pass


def available_memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of the machine from /proc/meminfo, or (None, None)."""
    try:
        with open("/proc/meminfo") as f:
            info = {}
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        return info.get("MemAvailable"), info.get("MemTotal")
    except (OSError, ValueError, IndexError):
        return None, None
