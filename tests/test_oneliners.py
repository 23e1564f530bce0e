"""allcores.map / allcores.imap, cpu_count, and the promise that `import allcores` is light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import allcores
from _tasks import add, double, sleep_then
from allcores._engine.cpu import cpu_count

pytestmark = pytest.mark.timeout(60)


def test_map_with_lambdas_closures_and_options():
    factor = 3
    assert allcores.map(lambda x: x * factor, range(10)) == [3 * x for x in range(10)]
    assert allcores.map(add, [(1, 2), (3, 4)], star=True) == [3, 7]
    assert sorted(allcores.map(double, range(50), ordered=False)) == [2 * x for x in range(50)]
    assert allcores.map(double, range(50), chunksize=7, workers=1) == [2 * x for x in range(50)]
    assert allcores.map(double, []) == []
    assert allcores.map(double, (x for x in range(5))) == [0, 2, 4, 6, 8]


def test_imap_yields_results_as_they_arrive_and_reads_input_lazily():
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield i

    results = allcores.imap(double, source(), workers=2)
    first = [next(results) for _ in range(10)]
    assert first == [2 * x for x in range(10)]
    # bounded read-ahead: far from the whole million
    assert pulled < 300_000
    results.close()


def test_imap_unordered_and_early_break():
    seen = []
    for value in allcores.imap(sleep_then, range(20), ordered=False, workers=2):
        seen.append(value)
        if len(seen) == 5:
            break
    assert len(set(seen)) == 5


def test_progress_bar_reaches_the_total():
    class Recorder:
        def __init__(self):
            self.n = 0
            self.closed = False

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    bar = Recorder()
    assert allcores.map(double, range(100), progress=bar) == [2 * x for x in range(100)]
    assert bar.n == 100 and bar.closed


def test_progress_true_draws_a_tqdm_bar(capsys):
    allcores.map(double, range(20), progress=True)
    assert "20/20" in capsys.readouterr().err


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="workers"):
        allcores.map(double, [1], workers=0)
    with pytest.raises(ValueError, match="chunksize"):
        allcores.map(double, [1], chunksize=0)
    with pytest.raises(ValueError, match="on_error"):
        allcores.map(double, [1], on_error="ignore")
    with pytest.raises(ValueError, match="timeout"):
        allcores.map(double, [1], timeout=-1)
    with pytest.raises(TypeError, match="callable"):
        allcores.map(42, [1])
    with pytest.raises(ValueError, match="start method"):
        allcores.Pool(1, context="teleport")


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(), max_size=200), st.sampled_from(["auto", 1, 3, 64]))
def test_map_equals_builtin_map(items, chunksize):
    assert allcores.map(double, items, chunksize=chunksize, workers=2) == list(map(double, items))


def test_cpu_count_honours_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_count(tmp_path) == min(2, cpu_count("/nonexistent"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_count(tmp_path) == cpu_count("/nonexistent")
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpu_count(v1) == 1
    assert allcores.cpu_count() >= 1


def test_import_allcores_is_light():
    # multiprocessing.pool is not on the list: allcores.errors subclasses its MaybeEncodingError
    # and RemoteTraceback (drop-in exception types), and with concurrent.futures.process already
    # loaded it costs 0.6 ms (python -X importtime). The engine's manager stays off the list.
    code = (
        "import sys, allcores; "
        "heavy = [m for m in ('numpy', 'pandas', 'PIL', 'tqdm', 'dask', 'ray', 'cloudpickle', "
        "'allcores._engine.manager') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_pinned():
    expected = {
        "Pool", "Executor", "map", "imap", "shutdown", "cpu_count", "MapResults", "Failure",
        "AsyncResult", "errors", "worker", "WorkerCrashedError", "TaskTimeoutError",
        "PoolClosedError", "share", "SharedArray", "Queue", "Pipe", "Lock", "RLock",
        "Semaphore", "Event", "Barrier", "Value", "Counter", "limit", "simulate",
        "__version__",
    }
    assert expected <= set(dir(allcores))
