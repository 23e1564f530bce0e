"""Who removes the kernel objects, and when: after use, after Ctrl-C, after SIGKILL, across fork."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import allcores
from allcores.sync import _resources

TIMEOUT = 60
FORK = multiprocessing.get_context("fork")


def _by_pid(pid: int) -> set[str]:
    tag = f"-{pid}-"
    return {f for f in os.listdir("/dev/shm") if "allcores-sync-" in f and tag in f}


MAKE_EVERYTHING = """
    import os, sys
    import allcores
    from multiprocessing import resource_tracker
    objs = [allcores.Queue(maxsize=5), allcores.Lock(), allcores.RLock(), allcores.Semaphore(3),
            allcores.Event(), allcores.Barrier(2), allcores.Value("d", 1.0), allcores.Counter(),
            *allcores.Pipe()]
    objs[0].put("x")
    objs[0].put(os.urandom(1 << 20))  # a spilled item, never read
    objs[0].flush()
    objs[4].wait(0.001)               # this thread's private wake semaphore exists now
    print(os.getpid(), resource_tracker._resource_tracker._pid, flush=True)
    sys.stdin.readline()              # the test looks at /dev/shm, then lets us go on
"""


def _finish(proc: subprocess.Popen) -> str:
    """The program's stderr once it ended; one that hangs is killed, so it cannot haunt the
    next test with an unraisable 'still running' warning, and the test fails with its stderr."""
    try:
        return proc.communicate(timeout=TIMEOUT)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the program did not end in {TIMEOUT} s; its stderr:\n{err}")


def _start(script: str) -> tuple[subprocess.Popen, int, int]:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(_finish(proc))
    pid, tracker = map(int, line.split())
    assert len(_by_pid(pid)) >= 12  # they exist while the program runs
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc, pid, tracker


def test_normal_exit_removes_everything():
    proc, pid, _ = _start(MAKE_EVERYTHING)
    err = _finish(proc)
    assert proc.returncode == 0, err
    assert _by_pid(pid) == set()
    assert "leaked" not in err  # the resource tracker had nothing left to clean


def test_ctrl_c_removes_everything():
    proc, pid, _ = _start(MAKE_EVERYTHING + "\n    objs[4].wait()  # blocks until Ctrl-C\n")
    proc.send_signal(signal.SIGINT)
    err = _finish(proc)
    assert "KeyboardInterrupt" in err
    assert _by_pid(pid) == set()
    assert "leaked" not in err


# The Ctrl-C lands while the interpreter is not inside the wait: a helper thread takes the
# signal (the main thread blocks it), so the C-level handler has run, and the main thread's
# semaphore wait is never interrupted by the kernel. This is the window CI once hit by chance
# (a SIGINT between the interpreter's last signal check and the start of the wait); an untimed
# wait made of one semaphore wait would block forever here.
BLOCKS = {
    "Event.wait": "e = allcores.Event()\nready()\ne.wait()",
    "Lock held": "lk = allcores.Lock()\nlk.acquire()\nready()\nlk.acquire()",
    "Lock with": "lk = allcores.Lock()\nlk.acquire()\nready()\nwith lk: pass",
    "Queue.get": "q = allcores.Queue()\nready()\nq.get()",
    "Semaphore": "s = allcores.Semaphore(0)\nready()\ns.acquire()",
}


def _until_main_thread_sleeps(pid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while psutil.Process(pid).status() != psutil.STATUS_SLEEPING:
        assert time.monotonic() < deadline, "the program never reached its wait"
        time.sleep(0.001)


@pytest.mark.parametrize("block", BLOCKS.values(), ids=BLOCKS.keys())
def test_ctrl_c_that_lands_outside_the_wait_still_interrupts_it(block):
    script = (
        "import signal, sys, threading, time\n"
        "import allcores\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
        "def ready():  # after the objects exist: starting the resource tracker unblocks SIGINT\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "    print('ready', flush=True)\n"
        + block + "\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n", _finish(proc)
    _until_main_thread_sleeps(proc.pid)  # in the wait: a signal before it would be seen in time
    proc.send_signal(signal.SIGINT)
    err = _finish(proc)
    assert "KeyboardInterrupt" in err, err


def test_sigkill_of_the_owner_is_cleaned_by_the_tracker_and_sweep():
    proc, pid, tracker = _start(MAKE_EVERYTHING + "\n    os.kill(os.getpid(), 9)\n")
    _finish(proc)
    assert proc.returncode == -signal.SIGKILL
    try:  # the tracker notices its last user is gone and unlinks what was registered
        psutil.Process(tracker).wait(TIMEOUT)
    except psutil.NoSuchProcess:
        pass
    leftovers = _by_pid(pid)
    # only the spilled item's file and the thread's wake semaphore are not tracker-registered:
    assert all("-x" in f or "sync-w-" in f for f in leftovers), leftovers
    _resources.sweep_dead_waiters()  # the next process that waits on anything does this
    left = _by_pid(pid)
    for f in left:
        os.unlink(f"/dev/shm/{f}")
    # the wake semaphore, and the spill of a SIGKILLed owner once its ring is gone
    assert left == set()


def use_then_die(q, lock, counter, event, done):
    with lock:
        counter.increment()
    q.put("before death")
    q.flush()
    event.wait(0.001)  # creates this worker's private wake semaphore
    done.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_sigkill_of_a_worker_leaves_objects_usable_and_nothing_behind():
    q, lock, counter, event, done = (allcores.Queue(), allcores.Lock(), allcores.Counter(),
                                     allcores.Event(), allcores.Event())
    p = FORK.Process(target=use_then_die, args=(q, lock, counter, event, done))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL and done.is_set()
    assert q.get(timeout=TIMEOUT) == "before death"
    assert lock.acquire(timeout=TIMEOUT)
    lock.release()
    assert counter.value == 1
    _resources.sweep_dead_waiters()
    assert _by_pid(p.pid) == set()  # a worker only opens names, so it leaves none behind
    q.close()


def try_rlock(rlock, result):
    got = rlock.acquire(timeout=0.05)
    result.value = 1 if got else 0


def test_forked_child_does_not_inherit_rlock_ownership():
    rlock, result = allcores.RLock(), allcores.Value("i", -1)
    with rlock:  # held by this thread while forking
        p = FORK.Process(target=try_rlock, args=(rlock, result))
        p.start()
        p.join(TIMEOUT)
    assert result.value == 0  # the child is another owner: it must not get in


def exit_quietly():
    pass


def test_fork_does_not_send_buffered_items_twice():
    q = allcores.Queue()
    for i in range(10):
        q.put(i)  # most likely still in this process's buffer when we fork
    p = FORK.Process(target=exit_quietly)
    p.start()
    p.join(TIMEOUT)
    q.flush()
    got = q.get_many(100, timeout=TIMEOUT)
    assert got == list(range(10))
    q.close()


def test_private_wake_semaphore_of_a_thread_goes_with_the_thread():
    import threading

    names = []

    def waiter():
        allcores.Event().wait(0.001)
        names.append(_resources._me.name)

    t = threading.Thread(target=waiter)
    t.start()
    t.join(TIMEOUT)
    gc.collect()
    assert names and not os.path.exists("/dev/shm/sem." + names[0][1:])


# -- a process killed while holding an internal mutex ---------------------------------------------


def die_holding(obj, started):
    obj._lock.acquire()  # the internal mutex, as if killed in the middle of an update
    started.set()
    threading.Event().wait()


@pytest.mark.parametrize("make", [allcores.Counter, allcores.Queue, allcores.Event])
def test_internal_mutex_of_a_killed_holder_is_taken_over(make):
    obj, started = make(), allcores.Event()
    p = FORK.Process(target=die_holding, args=(obj, started))
    p.start()
    assert started.wait(TIMEOUT)
    p.kill()  # not reaped yet: a zombie counts as dead
    if isinstance(obj, allcores.Counter):
        assert obj.increment() == 1  # after LOCK_CHECK_S, not never
    elif isinstance(obj, allcores.Queue):
        obj.put("x")
        assert obj.get(timeout=TIMEOUT) == "x"
        obj.close()
    else:
        obj.set()
        assert obj.wait(TIMEOUT)
    p.join(TIMEOUT)


def drain_forever(q, taken):
    while True:
        q.get()
        taken.increment()


def test_queue_survives_a_consumer_killed_inside_get():
    n = 60_000
    q, taken = allcores.Queue(), allcores.Counter()
    q.put_many(range(n))
    q.flush()
    p = FORK.Process(target=drain_forever, args=(q, taken))
    p.start()
    while taken.value < n // 3:
        pass
    p.kill()
    p.join(TIMEOUT)
    rest = []
    try:
        while True:
            rest += q.get_many(10_000, timeout=0.5)
    except Exception:
        pass
    # what is left is one unbroken tail of the sequence: nothing duplicated, nothing skipped
    # (the item the consumer was claiming when it died is either its own or still here)
    assert rest == list(range(rest[0], n)) and rest[0] >= taken.value
    q.put("still works")
    assert q.get(timeout=TIMEOUT) == "still works"
    q.close()
