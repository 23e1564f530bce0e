"""Nothing may stop a pool: odd items fail alone, and a pool that cannot go on says so at once.

Each case here stopped (or froze) the whole pool before the engine's second pass (issue 10).
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

import allcores
from _robust_tasks import (
    OddNotes,
    bytes_after_gate,
    exit_on_load_at,
    fork_helper_then,
    identity,
    raise_odd_notes,
    stall_mid_message,
)
from _tasks import failing_initializer, hang_on

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pool():
    with allcores.Pool(2) as p:
        yield p


# -- 1. an odd item fails alone --------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["collect", "raise"])
def test_an_exception_whose_notes_are_not_a_list_fails_only_its_item(pool, on_error):
    if on_error == "collect":
        out = pool.map(raise_odd_notes, [1, 2, 3], on_error="collect")
        assert out[0] == 1 and out[2] == 3
        assert isinstance(out[1], OddNotes) and str(out[1]) == "odd 2"
    else:
        with pytest.raises(OddNotes, match="odd 2"):
            pool.map(raise_odd_notes, [1, 2, 3])
    assert pool.map(identity, range(5)) == list(range(5))  # the pool goes on


def test_a_result_that_raises_systemexit_when_unpickled_fails_only_its_item(pool):
    out = pool.map(exit_on_load_at, [1, 2, 3], chunksize=1, on_error="collect")
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], allcores.errors.ResultPicklingError)
    assert "SystemExit" in str(out[1])
    assert pool.map(identity, range(5)) == list(range(5))


class _BrokenBar:
    def __init__(self, broken: str) -> None:
        self.broken = broken

    def update(self, n: int) -> None:
        if self.broken == "update":
            raise KeyError("the bar broke")

    def close(self) -> None:
        if self.broken == "close":
            raise KeyError("the bar broke")


@pytest.mark.parametrize("broken", ["update", "close"])
def test_a_progress_bar_that_raises_fails_only_its_call(pool, broken):
    with pytest.raises(KeyError, match="the bar broke"):
        pool.map(identity, range(20), progress=_BrokenBar(broken))
    with pytest.raises(KeyError, match="the bar broke"):
        list(pool.imap(identity, range(20), progress=_BrokenBar(broken)))
    assert pool.map(identity, range(5)) == list(range(5))


def test_a_call_on_a_closing_pool_raises_at_once():
    pool = allcores.Pool(1)
    try:
        running = pool.map_async(identity, range(3))
        pool.close()
        with pytest.raises(allcores.PoolClosedError):
            pool.map(identity, [1])
        assert running.get(timeout=30) == [0, 1, 2]
    finally:
        pool.terminate()


def test_a_call_on_a_broken_pool_raises_at_once():
    with allcores.Pool(1, initializer=failing_initializer) as pool:
        with pytest.raises(Exception, match="initializer"):
            pool.map(identity, [1, 2])
        with pytest.raises(Exception, match="initializer"):
            pool.map(identity, [1, 2])  # raises again, at once: never waits for a worker


# -- 2. a task that forks a helper -----------------------------------------------------------


def _reap(path) -> psutil.Process | None:
    try:
        return psutil.Process(int(path.read_text()))
    except (OSError, ValueError, psutil.NoSuchProcess):
        return None


@pytest.mark.timeout(30)  # the helper lives 60 s: old code noticed the death only then
def test_a_worker_that_dies_leaving_a_forked_helper_is_noticed_at_once(tmp_path):
    """The helper holds the worker's pipes and sentinel for 60 s; the death must be noticed
    from the worker's own exit, not the helper's (the test's timeout is shorter than 60 s)."""
    path = tmp_path / "helper.pid"
    helper = None
    try:
        with allcores.Pool(1) as pool:
            with pytest.raises(allcores.WorkerCrashedError, match="exit code 7|status 7"):
                pool.apply(fork_helper_then, (str(path),))
            helper = _reap(path)
            assert pool.map(identity, range(3)) == [0, 1, 2]
    finally:
        helper = helper or _reap(path)
        if helper is not None and helper.is_running():
            helper.kill()
            helper.wait(10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("session", [False, True], ids=["child", "own-session"])
def test_a_timed_out_task_takes_its_forked_helpers_with_it(tmp_path, session):
    path = tmp_path / "helper.pid"
    helper = None
    try:
        with allcores.Pool(1, timeout=1) as pool:
            with pytest.raises(allcores.TaskTimeoutError):
                pool.apply(fork_helper_then, (str(path), "hang", session))
            helper = _reap(path)
            assert helper is not None
            helper.wait(10)  # killed with the worker: it does not live on for 60 s
            helper = None
            assert pool.map(identity, range(3)) == [0, 1, 2]
    finally:
        helper = helper or _reap(path)
        if helper is not None and helper.is_running():
            helper.kill()
            helper.wait(10)


# -- 4. the manager never blocks on one worker -------------------------------------------------


def test_a_worker_stalled_mid_message_freezes_neither_the_manager_nor_other_timeouts():
    gate = allcores.Event()
    with allcores.Pool(2) as pool:
        stalled = pool.map_async(stall_mid_message, [gate], timeout=8)
        assert gate.wait(30)  # its worker has written half a message and stopped
        # The other worker's timeout still fires, and other work still runs.
        with pytest.raises(allcores.TaskTimeoutError):
            pool.map(hang_on, [3], timeout=1)
        assert pool.map(identity, range(4)) == [0, 1, 2, 3]
        with pytest.raises(allcores.TaskTimeoutError):
            stalled.get(timeout=40)  # its own timeout ends it; the half message is dropped
        assert pool.map(identity, range(4)) == [0, 1, 2, 3]


# -- 3. ordered imap behind a slow item holds a bounded number of bytes --------------------------


@pytest.mark.parametrize("facade", ["pool", "oneliner"])
def test_ordered_imap_holds_bounded_bytes_behind_a_slow_item(facade):
    """Item 0 waits on a gate; every other item returns 20 kB. The input must stop being read
    once about ``max_held_bytes`` of results wait behind item 0. If it reads too far (the bound
    failed), the generator opens the gate itself so the test ends, and the count shows it."""
    size, bound = 20_000, 1 << 20
    limit = 2 * bound // size + 10  # held and in flight within the bound, plus one chunk
    gate = allcores.Event()
    read = 0

    def items():
        nonlocal read
        for i in range(3000):
            read += 1
            if read > limit:
                gate.set()
            yield i

    with allcores.Pool(2) as pool:
        if facade == "pool":
            it = pool.imap(functools.partial(bytes_after_gate, gate=gate, size=size), items(),
                           max_held_bytes=bound)
        else:
            it = allcores.imap(functools.partial(bytes_after_gate, gate=gate, size=size),
                               items(), workers=2, max_held_bytes=bound)
        first = next(it)  # item 0 ends when its wait on the gate times out (3 s)
        assert len(first) == size
        assert read <= limit, f"read {read} items ahead of a slow one (limit {limit})"
        assert sum(len(v) for v in it) == 2999 * size  # then everything arrives, in order


@pytest.mark.timeout(30)  # the old engine deadlocked here, forever
def test_a_map_run_during_an_import_returning_that_modules_instances_does_not_deadlock():
    allcores.map(identity, [1], workers=1)  # the shared pool's worker exists before the import
    sys.modules.pop("_maps_at_import", None)
    try:
        module = importlib.import_module("_maps_at_import")
        assert [p.x for p in module.POINTS] == [0, 1, 2, 3]
        assert all(type(p) is module.Point for p in module.POINTS)
    finally:
        sys.modules.pop("_maps_at_import", None)


def test_an_odd_result_in_a_batch_of_tiny_jobs_fails_only_its_own_job():
    """Tiny apply_async jobs share messages; one result that will not unpickle must fail its
    own AsyncResult, and every other job of the same message must still get its value."""
    with allcores.Pool(1) as pool:
        for _ in range(20):  # learn the cost, so the jobs below are batched
            pool.apply(exit_on_load_at, (1,))
        results = [pool.apply_async(exit_on_load_at, (i % 50,)) for i in range(200)]
        for i, result in enumerate(results):
            if i % 50 == 2:
                with pytest.raises(allcores.errors.ResultPicklingError, match="SystemExit"):
                    result.get(timeout=30)
            else:
                assert result.get(timeout=30) == i % 50


def test_descendants_are_found_with_and_without_the_proc_children_files():
    """The list of a worker's descendants a timeout kills: the fast path (children files) and
    the fallback (every process's parent) both find a child and its child."""
    from allcores._engine import processes

    script = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(g.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())  # printed once it has started
        assert {child.pid, grandchild} <= set(processes.descendants(os.getpid()))
        by_parent = processes._children_by_parent()
        assert child.pid in by_parent[os.getpid()]
        assert grandchild in by_parent[child.pid]
    finally:
        for proc in [*psutil.Process(child.pid).children(recursive=True)]:
            proc.kill()
        child.kill()
        child.wait(10)
        child.stdout.close()


@given(
    sizes=st.lists(st.integers(0, 3000), max_size=20),
    cuts=st.lists(st.integers(1, 5000), max_size=40),
)
def test_messages_cut_anywhere_by_reads_come_out_whole_and_in_order(sizes, cuts):
    """The manager reads whatever a pipe holds and cuts messages from it: any split of the
    byte stream into reads yields exactly the messages sent, a partial one only once whole."""
    from allcores._engine import processes

    sent = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    stream = b"".join(processes.frame(m) for m in sent)
    inbox, got, pos = bytearray(), [], 0
    for cut in [*cuts, len(stream)]:
        inbox += stream[pos : pos + cut]
        pos += cut
        while (message := processes.take_frame(inbox)) is not None:
            got.append(message)
        assert got == sent[: len(got)]
    assert got == sent and not inbox


@pytest.mark.timeout(60)
def test_without_pidfds_a_timeout_is_still_reported_at_once(tmp_path):
    """Where os.pidfd_open is missing (kernels before 5.3, macOS), a worker killed for a timeout
    is reaped with waitpid right after the kill, not when its forked helper lets go of the
    sentinel. Run in a fresh interpreter without pidfd_open."""
    path = tmp_path / "helper.pid"
    script = textwrap.dedent(f"""
        import os, sys
        del os.pidfd_open
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import allcores
        from _robust_tasks import fork_helper_then
        with allcores.Pool(1, timeout=1) as pool:
            try:
                pool.apply(fork_helper_then, ({str(path)!r}, "hang"))
            except allcores.TaskTimeoutError:
                print("timed out")
            print(pool.map(abs, [-1, -2]))
    """)
    helper = None
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=30)
        assert out.stdout.split("\n")[:2] == ["timed out", "[1, 2]"], out.stderr
        helper = _reap(path)
        assert helper is not None
        helper.wait(10)  # killed with the worker
        helper = None
    finally:
        helper = helper or _reap(path)
        if helper is not None and helper.is_running():
            helper.kill()
            helper.wait(10)
