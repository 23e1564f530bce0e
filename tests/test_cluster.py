"""allcores on real Dask and Ray clusters: the same calls, the same semantics as locally.

Every test runs against both engines, each started once for the module (tests/_cluster.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import allcores
from _cluster import dask_cluster, ray_cluster
from _cluster_tasks import (
    Unpicklable,
    crash_on,
    fail_on,
    flaky,
    inc,
    local_pool_state,
    sleep_then,
    total,
)
from allcores.errors import (
    ArgumentPicklingError,
    RemoteTraceback,
    TaskTimeoutError,
    WorkerCrashedError,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=["dask", "ray"])
def backend(request):
    """What a user passes as ``backend=``: a live distributed.Client, or "ray"."""
    if request.param == "dask":
        yield from dask_cluster()
    else:
        for _ray in ray_cluster():
            yield "ray"


def _name(backend) -> str:
    return backend if isinstance(backend, str) else "dask"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pids(folder: Path) -> dict[int, int]:
    return {int(p.stem): int(p.read_text()) for p in folder.glob("*.pid") if p.read_text()}


# -- results -------------------------------------------------------------------------------


def test_map_of_many_tiny_items_is_exact(backend):
    n = 50_000
    assert allcores.map(inc, range(n), backend=backend) == list(range(1, n + 1))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    items=st.lists(st.integers(-1000, 1000), max_size=300),
    chunksize=st.one_of(st.just("auto"), st.integers(1, 50)),
    ordered=st.booleans(),
)
def test_map_equals_serial_for_any_input(backend, items, chunksize, ordered):
    out = allcores.map(inc, items, backend=backend, chunksize=chunksize, ordered=ordered)
    expected = [x + 1 for x in items]
    assert (out if ordered else sorted(out)) == (expected if ordered else sorted(expected))


def test_imap_reads_input_lazily_and_break_stops_the_call(backend):
    read = 0

    def endless():
        nonlocal read
        while True:
            read += 1
            yield read

    results = allcores.imap(inc, endless(), backend=backend, chunksize=1)
    first = [next(results) for _ in range(5)]
    assert first == [2, 3, 4, 5, 6]
    results.close()
    # Chunks in flight are bounded (two per slot), so only a handful were ever read.
    assert read < 50


def test_imap_unordered_and_star(backend):
    out = sorted(allcores.imap(pow, [(2, i) for i in range(20)], backend=backend, star=True,
                               ordered=False))
    assert out == sorted(2**i for i in range(20))


# -- crashes, timeouts, errors -----------------------------------------------------------------


def test_a_crash_fails_only_its_item_and_the_cluster_stays_usable(backend):
    out = allcores.map(crash_on, range(100), backend=backend, on_error="collect")
    assert [f.index for f in out.failures] == [37]
    error = out.failures[0].error
    assert isinstance(error, WorkerCrashedError)
    assert "37" in str(error)
    assert out[:37] == list(range(37)) and out[38:] == list(range(38, 100))
    assert allcores.map(inc, range(10), backend=backend) == list(range(1, 11))


def test_a_crash_under_raise_raises_worker_crashed(backend):
    with pytest.raises(WorkerCrashedError):
        allcores.map(crash_on, range(100), backend=backend)


def test_timeout_really_stops_the_item_and_the_others_finish(backend, tmp_path):
    items = [(0, 10.0, str(tmp_path))] + [(i, 0.05, str(tmp_path)) for i in range(1, 6)]
    started = time.monotonic()
    out = allcores.map(sleep_then, items, backend=backend, timeout=1, on_error="collect")
    elapsed = time.monotonic() - started
    assert [f.index for f in out.failures] == [0]
    assert isinstance(out[0], TaskTimeoutError)
    assert out[1:] == [1, 2, 3, 4, 5]
    assert elapsed < 8  # the 10 s item was stopped, not waited for
    slow_pid = _pids(tmp_path)[0]
    deadline = time.monotonic() + 5
    while not _gone(slow_pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kill is asynchronous on Ray: give it a moment to land
    assert _gone(slow_pid), "the timed-out item still runs on the cluster"


def test_task_exception_keeps_type_traceback_and_names_the_item(backend):
    with pytest.raises(KeyError) as info:
        allcores.map(fail_on, range(10), backend=backend)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_on" in str(info.value.__cause__)
    notes = getattr(info.value, "__notes__", [])
    assert any("item 3" in note and _name(backend) in note for note in notes)


@pytest.mark.parametrize("policy", ["collect", "skip"])
def test_error_policies(backend, policy):
    out = allcores.map(fail_on, range(10), backend=backend, on_error=policy)
    assert [f.index for f in out.failures] == [3]
    assert isinstance(out.failures[0].error, KeyError)
    if policy == "collect":
        assert isinstance(out[3], KeyError) and out[:3] == [0, 1, 2]
    else:
        assert out == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_retry_policy_reruns_a_failed_item(backend, tmp_path):
    items = [(i, str(tmp_path)) for i in range(6)]
    assert allcores.map(flaky, items, backend=backend, retries=1,
                        retry_on=(ValueError,)) == list(range(6))
    with pytest.raises(ValueError):  # without retry_on, a task error is not retried
        allcores.map(flaky, [(99, str(tmp_path))], backend=backend, retries=1)


def test_unpicklable_argument_fails_its_item_with_a_clear_error(backend):
    out = allcores.map(str, [1, Unpicklable(), 3], backend=backend, on_error="collect")
    assert [f.index for f in out.failures] == [1]
    assert isinstance(out.failures[0].error, ArgumentPicklingError)
    assert out[0] == "1" and out[2] == "3"


# -- progress, Ctrl-C, shares -----------------------------------------------------------------


class _Bar:
    def __init__(self):
        self.updates: list[int] = []
        self.closed = False

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


def test_progress_follows_chunk_completions(backend):
    bar = _Bar()
    allcores.map(inc, range(2000), backend=backend, progress=bar, chunksize=100)
    assert sum(bar.updates) == 2000 and len(bar.updates) >= 20 and bar.closed


def test_ctrl_c_returns_at_once_and_leaves_nothing_running(backend, tmp_path):
    items = [(i, 60.0, str(tmp_path)) for i in range(4)]
    started = threading.Event()

    def interrupt_when_running():
        deadline = time.monotonic() + 60
        while len(_pids(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # watching files another process writes: nothing to block on
        started.set()
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: it interrupts the blocked wait

    watcher = threading.Thread(target=interrupt_when_running)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            allcores.map(sleep_then, items, backend=backend)
        returned, returned_wall = time.monotonic(), time.time()
    finally:
        watcher.join()
    assert started.is_set()
    # "At once": long before the 60 s items would have ended.
    assert returned_wall - min(p.stat().st_mtime for p in tmp_path.glob("*.pid")) < 10
    pids = list(_pids(tmp_path).values())
    assert pids
    deadline = returned + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids), "an item of the interrupted call still runs"
    assert allcores.map(inc, [1], backend=backend) == [2]


def test_read_only_share_travels_and_writable_is_refused(backend):
    np = pytest.importorskip("numpy")
    data = np.arange(1000, dtype=np.float64)
    with allcores.share(data) as handle:
        sums = allcores.map(total, [(handle, i, i + 100) for i in range(0, 1000, 100)],
                            backend=backend)
        assert sums == [float(data[i:i + 100].sum()) for i in range(0, 1000, 100)]
    out = allcores.SharedArray.zeros(10)
    try:
        with pytest.raises(ArgumentPicklingError, match="writable"):
            allcores.map(len, [out], backend=backend)
    finally:
        out.close()


# -- the facades -----------------------------------------------------------------------------


def test_pool_and_executor_on_the_cluster(backend):
    with allcores.Pool(backend=backend) as pool:
        assert pool.map(inc, range(100)) == list(range(1, 101))
        assert pool.apply(pow, (2, 8)) == 256
        assert sorted(pool.imap_unordered(inc, range(10))) == list(range(1, 11))
        assert pool.worker_pids() == []
    with allcores.Executor(backend=backend) as ex:
        assert ex.submit(pow, 3, 3).result(timeout=60) == 27
        assert list(ex.map(inc, range(5))) == [1, 2, 3, 4, 5]


def test_backend_context_variable(backend):
    with allcores.backend(backend):
        assert allcores.map(os.getpid, [()] * 4, star=True) != [os.getpid()] * 4
        with allcores.backend("processes"):
            assert allcores.map(inc, [1]) == [2]


def test_local_only_options_are_refused_on_a_cluster(backend):
    with pytest.raises(ValueError, match="initializer"):
        allcores.Pool(backend=backend, initializer=print)


# -- run statistics, imap's errors in place --------------------------------------------------


def test_run_statistics_come_from_the_cluster_workers(backend, tmp_path):
    report = tmp_path / "run.html"
    out = allcores.map(inc, range(3000), backend=backend, chunksize=100, report=report)
    stats = out.stats
    assert stats.items == 3000 and stats.chunks == 30
    assert sum(w.tasks for w in stats.per_worker) == 3000
    assert stats.busy_seconds > 0 and len(stats.spans) == 30
    # The spans are on the caller's clock: inside the call, one per chunk, in time order.
    assert all(0 <= s.start <= s.end <= stats.wall_seconds + 0.1 for s in stats.spans)
    assert "inc" in stats.function
    assert report.stat().st_size > 0
    with allcores.Pool(backend=backend) as pool:
        pool.map(inc, range(500), chunksize=50)
        pool.map(fail_on, range(10), chunksize=1, on_error="collect")
        assert pool.statistics().items == 510 and pool.statistics().chunks == 20


def test_run_statistics_count_crashes_on_the_cluster(backend):
    out = allcores.map(crash_on, range(40), backend=backend, on_error="collect", chunksize=10)
    assert [f.index for f in out.failures] == [37]
    assert out.stats.crashes >= 1
    assert out.stats.items >= 39  # every item that ran to its end, the re-runs included


def test_pool_imap_raises_a_failed_item_in_its_place_and_goes_on(backend):
    """As multiprocessing.Pool.imap: the failure is raised where the item is, the items after
    it still come (chunksize 1, the default)."""
    got: list = []
    with allcores.Pool(backend=backend) as pool:
        results = pool.imap(fail_on, range(10))
        for _ in range(10):
            try:
                got.append(results.next(timeout=120))
            except KeyError:
                got.append("KeyError")
        with pytest.raises(StopIteration):
            results.next(timeout=120)
    assert got == [0, 1, 2, "KeyError", 4, 5, 6, 7, 8, 9]


_INTERRUPTED_DRIVER = """
import sys, allcores
sys.path.insert(0, {tests!r})
import cloudpickle, _cluster_tasks
cloudpickle.register_pickle_by_value(_cluster_tasks)
items = [(i, 60.0, {folder!r}) for i in range(4)]
try:
    allcores.map(_cluster_tasks.sleep_then, items, backend={name!r}, address={address!r})
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_in_a_driver_process_stops_only_its_call(backend, tmp_path):
    """A real SIGINT to another driver process: its items stop at once, the cluster (on Dask:
    each worker's local pool too, the same pool, not a restarted one) serves the next call."""
    import subprocess
    import sys

    if _name(backend) == "dask":
        address = backend.scheduler.address
        assert allcores.map(inc, range(20), backend=backend, chunksize=1) == list(range(1, 21))
        pools_before = backend.run(local_pool_state)
        assert all(state is not None for state in pools_before.values())
    else:
        import ray

        address = ray.get_runtime_context().gcs_address
    script = _INTERRUPTED_DRIVER.format(tests=str(Path(__file__).parent), folder=str(tmp_path),
                                        name=_name(backend), address=address)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_pids(tmp_path)) < 2 and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before its items started"
            time.sleep(0.05)  # watching files other processes write: nothing to block on
        assert len(_pids(tmp_path)) >= 2
        driver.send_signal(signal.SIGINT)
        out, _ = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 130 and "interrupted" in out
    pids = list(_pids(tmp_path).values())
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids), "an item of the interrupted call still runs"
    assert allcores.map(inc, range(20), backend=backend, chunksize=1) == list(range(1, 21))
    if _name(backend) == "dask":
        pools_after = backend.run(local_pool_state)
        # The same local pool on each worker: only the processes that ran the call's items
        # were replaced.
        assert {w: s[0] for w, s in pools_after.items()} == {
            w: s[0] for w, s in pools_before.items()
        }
