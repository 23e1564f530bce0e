"""Shared memory and named objects on a shared machine (issue 11, items 1, 2 and 3).

``/dev/shm`` belongs to every user (and to containers that mount the host's). These tests
plant what another user, another pid namespace or a recycled name leaves there, and check that
allcores neither stops nor reads it. A second user is ``nobody``: files are handed to it with
``os.chown`` and code runs as it in a forked child after ``setuid``; both need root, and the
tests that need them skip (saying why) otherwise.
"""

from __future__ import annotations

import _multiprocessing
import gc
import glob
import os
import pickle
import pwd
import struct
import subprocess
import sys

import numpy as np
import pytest

import allcores
from allcores._engine import shm
from allcores.errors import ForeignObjectError
from allcores.sync import _queue, _resources

pytestmark = pytest.mark.timeout(120)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a second user's files (os.chown, setuid to nobody) need root"
)


def nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def give_to_nobody(path: str, mode: int = 0o666) -> None:
    """What another user's file at this name would look like."""
    os.chown(path, *nobody())
    os.chmod(path, mode)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def as_nobody(fn) -> str:
    """Run ``fn()`` in a forked child that became ``nobody``; "ok" or the error it raised.

    Everything ``fn`` needs must be imported already: nobody may not read this interpreter's
    standard library.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            uid, gid = nobody()
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            fn()
            message = b"ok"
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}".encode()
        os.write(w, message)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- item 1


def test_names_carry_the_user_so_users_never_collide():
    name, fd = shm.new_segment()
    os.close(fd)
    shm.discard([name])
    assert name.startswith(f"allcores-{os.geteuid()}-")
    assert f"-{os.geteuid()}-" in _resources.new_name("m")


@needs_root
def test_another_users_leftovers_stop_no_one_elses_pool():
    """Leftovers of a dead process of *another* user (root, here) cannot be removed by nobody
    (/dev/shm is sticky); the sweeps must skip them, not fail every pool and every wait."""
    with allcores.Pool(1) as pool:  # import everything a pool needs before becoming nobody
        assert pool.map(abs, [-1]) == [1]
    dead = dead_pid()
    pid_ns = os.stat("/proc/self/ns/pid").st_ino
    planted = [
        f"/dev/shm/allcores-{dead}-0",  # the names of earlier versions
        f"/dev/shm/allcores-{os.geteuid()}-{pid_ns:x}-{dead}-0",  # root's names today
    ]
    wake = f"/allcores-sync-w-{dead}-0-deadbeef"
    wake_now = f"/allcores-sync-w-{os.geteuid()}-{pid_ns:x}-{dead}-0-deadbeef"
    for path in planted:
        with open(path, "wb"):
            pass
        os.chmod(path, 0o600)
    sems = [_multiprocessing.SemLock(1, 0, 1, n, False) for n in (wake, wake_now)]
    try:

        def everything_a_user_does():
            shm.sweep_stale()  # every pool start
            with allcores.Pool(1) as pool:
                assert pool.map(abs, [-2, 3]) == [2, 3]
            _resources._me.pid = -1  # a fresh process: its first wait sweeps dead waiters
            name, sem = _resources.my_semaphore()
            assert sem.acquire(True, 0.01) is False  # a wait that times out
            _resources._me.holder = None  # unlinks it (the tracker is root's, not used)

        # (Whether the files are still there is not checked: any sweep running as root, such
        # as another test run on this machine, may rightly remove root's dead leftovers.)
        assert as_nobody(everything_a_user_does) == "ok"
    finally:
        for path in planted:
            unlink_quietly(path)
        del sems
        for n in (wake, wake_now):
            try:
                _multiprocessing.sem_unlink(n)
            except FileNotFoundError:
                pass


# --------------------------------------------------------------------------- item 2

IN_ANOTHER_NAMESPACE = """
import os, sys
from allcores._engine import shm
# the next pid in this new namespace: one that is surely not alive outside it
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write("3999990")
pid = os.fork()
if pid == 0:
    name, fd = shm.new_segment(16)
    print(name, flush=True)
    sys.stdin.read()                      # alive until the test says so
    os._exit(0)
os.waitpid(pid, 0)
"""


@needs_root
def test_a_live_segment_of_another_pid_namespace_is_not_swept():
    """A container sharing /dev/shm has its own pids: pid 3999991 there is alive, while here
    no such process exists. A sweep that trusted kill(pid, 0) would delete its live data."""
    try:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
             IN_ANOTHER_NAMESPACE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    except OSError as exc:
        pytest.skip(f"cannot start a process in a new pid namespace here: {exc}")
    name = proc.stdout.readline().strip()
    if not name:
        proc.communicate(timeout=30)
        pytest.skip(f"cannot start a process in a new pid namespace here: {proc.stderr.read()}")
    path = os.path.join(shm.SHM_DIR, name)
    try:
        assert os.path.exists(path)
        shm.sweep_stale()  # what every pool does when it starts
        assert os.path.exists(path), "a live process's segment was deleted"
    finally:
        proc.communicate("", timeout=30)
        unlink_quietly(path)


# --------------------------------------------------------------------------- item 3


def craft_ring(q_name: str, item: object, size: int) -> str:
    """A Queue ring at ``q_name`` holding one record with ``item``: what an attacker writes."""
    path = "/dev/shm/" + q_name[1:]
    payload = pickle.dumps([item])
    head = struct.pack("8q", 0, _queue._RH + len(payload) + 7 & ~7, 0, 1, 1,
                       _queue.RING_BYTES, 0, 0)
    record = _queue._REC.pack(0, 1, 0, len(payload)) + payload
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, head, 0)
        os.pwrite(fd, record, _queue._DATA)
    finally:
        os.close(fd)
    return path


def recreate_semaphores(names, owner_nobody: bool) -> list:
    sems = []
    for n in names:
        sems.append(_multiprocessing.SemLock(1, 1, 1, n, False))
        if owner_nobody:
            give_to_nobody(f"/dev/shm/sem.{n[1:]}")
    return sems


def forget_semaphores(names) -> None:
    for n in names:
        try:
            _multiprocessing.sem_unlink(n)
        except FileNotFoundError:
            pass


@needs_root
def test_a_queue_recreated_by_another_user_is_refused_not_unpickled():
    q = allcores.Queue()
    handle = pickle.dumps(q)
    ring, (lock_name, _) = q._ring_name, q._names
    size = os.fstat(os.open(f"/dev/shm/{ring[1:]}", os.O_RDONLY)).st_size
    q.close()  # the owner releases every name
    del q
    gc.collect()
    sem_names = [lock_name, _resources.recovery_name(lock_name)]
    path = craft_ring(ring, "the attacker's object", size)
    give_to_nobody(path)
    sems = recreate_semaphores(sem_names, owner_nobody=True)
    try:
        with pytest.raises(ForeignObjectError, match="belongs to uid"):
            late = pickle.loads(handle)
            late.get(timeout=1)  # old code: the attacker's pickle, unpickled here
    finally:
        unlink_quietly(path)
        del sems
        forget_semaphores(sem_names)


def test_a_block_recreated_at_a_released_name_fails_the_secret_check():
    """Same user, same name (a recycled pid, say): the owner check passes, the secret does
    not."""
    event = allcores.Event()
    handle = pickle.dumps(event)
    name, lock_name = event._shm_name, event._lock_name
    size = len(event._mm)
    event._owner.release()
    del event
    gc.collect()
    sem_names = [lock_name, _resources.recovery_name(lock_name)]
    path = "/dev/shm/" + name[1:]
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, size)
    os.pwrite(fd, struct.pack("q", 1), 0)  # "set"
    os.close(fd)
    sems = recreate_semaphores(sem_names, owner_nobody=False)
    try:
        with pytest.raises(ForeignObjectError, match="secret"):
            pickle.loads(handle)
    finally:
        unlink_quietly(path)
        del sems
        forget_semaphores(sem_names)


@needs_root
def test_a_lock_recreated_by_another_user_is_refused():
    lock = allcores.Lock()
    handle = pickle.dumps(lock)
    name = lock._name
    lock._owner.release()
    del lock
    gc.collect()
    sems = recreate_semaphores([name], owner_nobody=True)
    try:
        with pytest.raises(ForeignObjectError, match="semaphore"):
            pickle.loads(handle)
    finally:
        del sems
        forget_semaphores([name])


@needs_root
@pytest.mark.parametrize("who", ["another user", "same user, other share"])
def test_a_shared_array_recreated_at_its_name_is_refused_never_mapped(who):
    share = allcores.share(np.arange(64, dtype=np.float64))
    handle = pickle.dumps(share)
    path = os.path.join(shm.SHM_DIR, share.name)
    share.close()
    with open(path, "xb") as f:
        f.write(np.full(64, 666.0).tobytes() + b"\0" * 16)
    os.chmod(path, 0o600)
    if who == "another user":
        give_to_nobody(path)
    try:
        late = pickle.loads(handle)
        with pytest.raises(ForeignObjectError):
            late.array.sum()
    finally:
        unlink_quietly(path)


@needs_root
@pytest.mark.parametrize("change", ["owner", "mode"])
def test_a_received_segment_must_be_ours_and_private(change):
    data, names = shm.pack({"x": np.zeros(2**16)})  # 512 KiB: one segment
    (name,) = names
    path = os.path.join(shm.SHM_DIR, name)
    if change == "owner":
        give_to_nobody(path, 0o600)
    else:
        os.chmod(path, 0o644)
    try:
        with pytest.raises(ForeignObjectError):
            shm.unpack(data)
    finally:
        unlink_quietly(path)


@needs_root
def test_a_queue_spill_file_that_is_not_ours_is_refused_not_unpickled():
    q = allcores.Queue()
    try:
        q.put(b"x" * (_queue.RING_BYTES // 2))  # bigger than a record: it spills to a file
        q.flush()
        (spill,) = glob.glob(f"/dev/shm/{q._ring_name[1:]}-x*")
        give_to_nobody(spill)  # what a file someone else put at that name looks like
        with pytest.raises(ForeignObjectError, match="spill"):
            q.get(timeout=10)
    finally:
        q.close()
        for path in glob.glob(f"/dev/shm/{q._ring_name[1:]}-x*"):
            unlink_quietly(path)
