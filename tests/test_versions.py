"""Behaviours that differ between Python versions, and the 3.14 API on every version.

- ``Executor.terminate_workers()`` / ``kill_workers()`` (``ProcessPoolExecutor``, 3.14):
  running futures fail with ``BrokenProcessPool``, the rest are cancelled, submit raises.
- ``Executor.map(buffersize=)`` (3.14) is accepted on every version.
- An executor collected without ``shutdown()`` lets its submitted work finish, as the standard
  executor's weakref callback does (its manager drains the queue before it stops).
- A per-item ``timeout=`` starts when the item starts running, not while its worker starts
  (spawn, an initializer): a replacement worker's start-up is no part of the item's time.
- 3.12+: forking workers from a process with threads warns (DeprecationWarning); allcores'
  pools make user code emit none where the standard pools emit none.
"""

from __future__ import annotations

import gc
import multiprocessing
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

import _dropin_tasks as t
import allcores
from allcores._engine.processes import _FORK_WARNING_FILTER, _fork_warning_ignored
from allcores.errors import PoolClosedError

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # seconds: a bound for the test, never reached when things work


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_running_work_at_once(how):
    event = multiprocessing.get_context("fork").Event()
    ex = allcores.Executor(1, mp_context="fork", initializer=t.keep, initargs=(event,))
    pids = ex._engine.pids()
    running = ex.submit(t.set_event_then_sleep, 60)
    waiting = ex.submit(t.double, 2)
    assert event.wait(WAIT)
    started = time.monotonic()
    getattr(ex, how)()
    assert time.monotonic() - started < 10  # not the 60 s the item would have run
    with pytest.raises(BrokenProcessPool):
        running.result(timeout=WAIT)
    with pytest.raises(CancelledError):
        waiting.result(timeout=WAIT)
    with pytest.raises(RuntimeError):
        ex.submit(t.double, 1)
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)],
                                    timeout=WAIT)
    assert not alive
    ex.shutdown()  # harmless afterwards, as on the standard executor


def test_terminate_workers_on_an_idle_executor_and_twice():
    ex = allcores.Executor(2)
    assert ex.submit(t.double, 4).result(timeout=WAIT) == 8
    ex.terminate_workers()
    ex.kill_workers()
    with pytest.raises(PoolClosedError):
        ex.submit(t.double, 1)


@pytest.mark.skipif(
    not hasattr(ProcessPoolExecutor, "terminate_workers"),
    reason="ProcessPoolExecutor.terminate_workers() is new in Python 3.14; the test above "
    "checks allcores against its documentation on older versions",
)
def test_terminate_workers_as_the_standard_executor():
    def outcome(ex):
        future = ex.submit(t.sleep_then_return, 60, 1)
        ex.terminate_workers()
        try:
            future.result(timeout=WAIT)
        except BaseException as exc:
            return isinstance(exc, (BrokenProcessPool, CancelledError))
        return False

    assert outcome(allcores.Executor(1)) == outcome(ProcessPoolExecutor(1)) is True


def test_map_buffersize_on_every_version():
    with allcores.Executor(2) as ex:
        assert list(ex.map(t.double, range(20), buffersize=3)) == [2 * i for i in range(20)]
        # Python 3.14's errors, in its words
        with pytest.raises(ValueError, match="buffersize must be None or > 0"):
            ex.map(t.double, range(3), buffersize=0)
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            ex.map(t.double, range(3), buffersize=2.0)


@pytest.mark.parametrize("make", [allcores.Executor, ProcessPoolExecutor],
                         ids=["allcores", "stdlib"])
def test_collected_executor_finishes_its_submitted_work(make):
    ex = make(1, mp_context=multiprocessing.get_context("fork"))
    futures = [ex.submit(t.sleep_then_return, 0.2, i) for i in range(3)]
    del ex
    gc.collect()
    assert [f.result(timeout=WAIT) for f in futures] == [0, 1, 2]



def test_a_shut_down_executor_leaves_no_thread_behind_once_collected():
    """CPython's own tests count Thread objects still referenced after a test (threading_cleanup)
    and wait seconds on each: an executor shut down, then collected, must hold none."""
    import weakref

    ex = allcores.Executor(1, mp_context=multiprocessing.get_context("fork"))
    assert ex.submit(abs, -3).result(timeout=WAIT) == 3
    manager_thread = weakref.ref(ex._engine._manager._thread)
    ex.shutdown(wait=True)
    del ex
    gc.collect()
    assert manager_thread() is None


def test_collected_executor_work_finishes_at_interpreter_exit():
    script = textwrap.dedent(
        """
        import gc, sys
        sys.path.insert(0, {tests!r})
        import allcores, _dropin_tasks as t
        ex = allcores.Executor(1)
        futures = [ex.submit(t.sleep_and_print, 0.2, f"item {{i}}") for i in range(3)]
        del ex
        gc.collect()
        """
    ).format(tests=str(__import__("pathlib").Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=WAIT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["item 0", "item 1", "item 2"]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_timeout_clock_starts_when_the_item_runs_not_while_the_worker_starts(start):
    # The initializer takes 1.5 s, the item 0.05 s, the timeout is 1 s: only the worker's
    # start-up could make the item time out. maxtasksperchild=1: the second item runs on a
    # replacement worker, started while the item waits for it.
    with allcores.Executor(1, mp_context=start, initializer=time.sleep, initargs=(1.5,),
                           max_tasks_per_child=1, timeout=1.0) as ex:
        first = ex.submit(t.sleep_then_return, 0.05, "first")
        second = ex.submit(t.sleep_then_return, 0.05, "second")
        assert first.result(timeout=WAIT) == "first"
        assert second.result(timeout=WAIT) == "second"
    with allcores.Pool(1, context=start, initializer=time.sleep, initargs=(1.5,),
                       maxtasksperchild=1) as pool:
        assert pool.map(t.double, [1, 2], chunksize=1, timeout=1.0) == [2, 4]


def test_timeout_still_stops_an_item_that_runs_too_long_after_a_slow_start():
    from allcores.errors import TaskTimeoutError

    with allcores.Executor(1, initializer=time.sleep, initargs=(1.0,), timeout=0.5) as ex:
        started = time.monotonic()
        with pytest.raises(TaskTimeoutError):
            ex.submit(t.sleep_then_return, 60, None).result(timeout=WAIT)
        assert time.monotonic() - started < 20


FORK_WARNING = textwrap.dedent(
    """
    import multiprocessing, sys, threading, warnings
    warnings.simplefilter("always")  # shown wherever it comes from (an error would vanish:
    # os.fork() reports a warning that raises as unraisable, and goes on)
    sys.path.insert(0, {tests!r})
    import allcores, _dropin_tasks as t
    Pool = {pool}
    with Pool(2, maxtasksperchild=1) as pool:
        assert pool.map(t.double, range(8), chunksize=1) == [2 * i for i in range(8)]
        with Pool(1) as second:  # forked while the first pool's threads run
            assert second.map(t.double, [1]) == [2]
    print("ok")
    """
)
TESTS = str(__import__("pathlib").Path(__file__).parent)


def _fork_warnings(pool: str) -> str:
    script = FORK_WARNING.format(tests=TESTS, pool=pool)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=WAIT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    return out.stderr


def test_no_fork_warning_from_allcores_pools():
    """Python 3.12+ warns on a fork while threads run; allcores' forks are made safe (the child
    runs only the worker loop, see _engine/processes.py) and say nothing, on every version."""
    pool = "lambda n, **kw: allcores.Pool(n, context='fork', **kw)"
    assert "Warning" not in _fork_warnings(pool)
    executor = "lambda n, **kw: allcores.Executor(n, mp_context='fork', max_tasks_per_child=1)"
    script = FORK_WARNING.format(tests=TESTS, pool=executor).replace(
        "pool.map(t.double, range(8), chunksize=1)", "list(pool.map(t.double, range(8)))"
    ).replace("second.map(t.double, [1])", "list(second.map(t.double, [1]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=WAIT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert "Warning" not in out.stderr, out.stderr


FORK_WARNING_TEXT = ("This process (pid=1) is multi-threaded, use of fork() may lead to "
                     "deadlocks in the child.")


def test_fork_warning_is_ignored_while_a_worker_is_forked_and_only_then():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _fork_warning_ignored():
            warnings.warn(FORK_WARNING_TEXT, DeprecationWarning)  # ignored: no error
            with pytest.raises(UserWarning):
                warnings.warn("another warning", UserWarning)  # the others still apply
        with pytest.raises(DeprecationWarning):
            warnings.warn(FORK_WARNING_TEXT, DeprecationWarning)


@pytest.mark.parametrize("ours_first", [True, False])
def test_fork_warning_filter_leaves_another_threads_catch_warnings_intact(ours_first):
    """A replacement worker is forked on the manager thread while the caller's thread may enter
    or leave ``warnings.catch_warnings`` (pytest does around every test). The two interleave
    here, in each order: afterwards the filters are exactly what the caller had, and nothing of
    either block is left. (With ``catch_warnings`` on the manager thread, as before, both
    orders left the caller's filter in force after its block.)"""
    before = list(warnings.filters)
    ours = _fork_warning_ignored()
    theirs = warnings.catch_warnings()
    if ours_first:
        ours.__enter__()
        theirs.__enter__()
        warnings.simplefilter("error", UserWarning)
        ours.__exit__(None, None, None)
        assert warnings.filters[0][:3] == ("error", None, UserWarning)  # theirs still holds
        theirs.__exit__(None, None, None)
    else:
        theirs.__enter__()
        warnings.simplefilter("error", UserWarning)
        ours.__enter__()
        theirs.__exit__(None, None, None)
        ours.__exit__(None, None, None)
    assert list(warnings.filters) == before
    assert all(entry is not _FORK_WARNING_FILTER for entry in warnings.filters)


def test_the_fork_warning_check_sees_the_standard_pools_warning():
    """The check above can fail: on 3.12+ the same script on multiprocessing.Pool warns."""
    stderr = _fork_warnings("multiprocessing.get_context('fork').Pool")
    assert ("multi-threaded, use of fork()" in stderr) == (sys.version_info >= (3, 12)), stderr


def test_python_cpu_count_setting_sets_the_default_workers_as_in_the_standard_pools():
    """Python 3.13 added PYTHON_CPU_COUNT (and -X cpu_count): the standard pools' default
    worker count follows it; so does allcores'. Before 3.13 both ignore it."""
    script = (
        "import multiprocessing, allcores\n"
        "with multiprocessing.Pool() as p:\n"
        "    std = p._processes\n"
        "with allcores.Pool() as p:\n"
        "    ours = p._processes\n"
        "print(std, ours, allcores.cpu_count())\n"
    )
    env = {**__import__("os").environ, "PYTHON_CPU_COUNT": "3"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=WAIT, env=env)
    assert out.returncode == 0, out.stderr
    std, ours, count = map(int, out.stdout.split())
    if sys.version_info >= (3, 13):
        assert std == ours == count == 3
    else:
        assert count == allcores.cpu_count()  # the setting does not exist there


@pytest.mark.parametrize("kind", ["imap", "executor-map"])
def test_a_call_collected_while_its_pool_lock_is_held_does_not_deadlock(kind):
    """A garbage collection may run inside any allocation, in the thread that holds the pool's
    state lock (submit() allocating its command): a collected imap iterator or Executor.map
    generator then cancels its call from there. Seen on 3.10 and 3.12, where collections fall at
    other moments than on 3.11, as a hang of the suite."""
    import threading

    with allcores.Executor(1) if kind == "executor-map" else allcores.Pool(1) as pool:
        if kind == "imap":
            call = pool.imap(t.double, range(1000))
        else:
            call = pool.map(t.double, range(1000))
        next(call)
        cycle: list = [call]
        cycle.append(cycle)  # only the collector frees it
        del call, cycle
        manager = pool._engine._manager

        def collect_holding_the_lock():
            with manager._state_lock:
                gc.collect()

        worker = threading.Thread(target=collect_holding_the_lock, daemon=True)
        worker.start()
        worker.join(WAIT)
        assert not worker.is_alive(), "the collection deadlocked on the pool's state lock"
        assert list(pool.map(t.double, [1, 2])) == [2, 4]  # the pool goes on


def test_a_process_forked_while_an_executor_has_work_exits_without_waiting_for_it():
    """A forked child inherits the parent's executors, not their manager threads: at its exit
    it must not wait for their work (a replacement worker forked while an executor had work
    pending hung there, and its pool with it: the 3.12 flake of the fork-warning test)."""
    script = (
        "import multiprocessing, sys\n"
        f"sys.path.insert(0, {TESTS!r})\n"
        "import allcores, _tasks as t\n"
        "with allcores.Executor(1, mp_context='fork') as ex:\n"
        "    pending = ex.submit(t.sleep_then, 1, 2.0)\n"
        "    child = multiprocessing.get_context('fork').Process(target=int)\n"
        # As when the manager thread forks a replacement while the main thread is in submit():
        "    with ex._shutdown_lock:\n"
        "        child.start()\n"
        "    child.join(20)\n"
        "    print(child.exitcode)\n"
        "    assert pending.result() == 1\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=WAIT)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr + out.stdout
