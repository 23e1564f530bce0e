"""The one helper through which the batch tools reach the engine, and their statistics/reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import _tasks
import allcores
from allcores._batch import BatchRun, resolve_workers

pytestmark = pytest.mark.timeout(120)


def test_one_worker_runs_in_this_process_and_still_has_statistics():
    with BatchRun(1, tool="t") as run:
        out = list(run.imap(_tasks.fail_on, [1, 2, 3, 4], on_error="collect"))
    assert out[0] == 1 and isinstance(out[2], ValueError)
    stats = run.stats
    assert stats.items == 4 and stats.workers == 1
    assert [w.worker for w in stats.per_worker] == [0]
    assert stats.chunks == 4 and stats.busy_seconds >= 0
    assert stats.function == "_tasks.fail_on"


def test_one_worker_raises_a_task_error_under_raise():
    with pytest.raises(ValueError), BatchRun(1, tool="t") as run:
        list(run.imap(_tasks.fail_on, [1, 2, 3]))


def test_several_calls_make_one_runs_statistics(tmp_path):
    path = tmp_path / "batch.html"
    with BatchRun(2, tool="t", report=path) as run:
        assert list(run.imap(abs, list(range(-20, 0)))) == list(range(20, 0, -1))
        assert sorted(run.imap(_tasks.double, list(range(30)), ordered=False)) == [
            2 * x for x in range(30)]
    stats = run.stats
    assert stats.items == 50 and stats.workers == 2
    assert "abs" in stats.function and "double" in stats.function
    assert stats.wall_seconds > 0
    assert "allcores run report" in path.read_text()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_the_worker_check_says_what_to_pass(bad):
    with pytest.raises(ValueError, match="positive whole number"):
        resolve_workers(bad)


def test_a_bad_report_path_fails_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BatchRun(2, tool="t", report=tmp_path / "missing" / "r.html")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        allcores.simulate("pi", 1000, seed=1, workers=2, report=tmp_path / "no" / "r.html")


def test_simulate_result_carries_statistics_and_writes_a_report(tmp_path):
    path = tmp_path / "sim.html"
    r = allcores.simulate("pi", 4 * 2**18, seed=3, workers=2, report=path)
    assert r.stats.items >= 2 and r.stats.workers == 2
    assert r.stats.function.endswith("_run_task")
    assert path.stat().st_size > 100_000
    one = allcores.simulate("pi", 4 * 2**18, seed=3, workers=1)
    assert one.stats.workers == 1 and one.stats.items >= 1
    assert one.estimate == r.estimate
    assert "stats" in r.to_dict() and r.to_dict()["stats"]["items"] == r.stats.items


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "allcores", *args], capture_output=True,
                          text=True, timeout=90)


def test_simulate_cli_json_has_stats_and_report_is_written(tmp_path):
    run = _cli("simulate", "pi", "--samples", "1e6", "--seed", "1", "--workers", "2", "--json")
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)["stats"]
    assert stats["workers"] == 2 and len(stats["per_worker"]) == 2
    assert stats["items"] >= 2 and stats["verdict"]
    path = tmp_path / "r.html"
    run = _cli("simulate", "pi", "--samples", "1e6", "--workers", "2", "--report", str(path))
    assert run.returncode == 0, run.stderr
    assert f"report: {path}" in run.stdout
    assert "allcores run report" in path.read_text()
    run = _cli("simulate", "pi", "--samples", "1e6", "--report", str(tmp_path / "x" / "r.html"))
    assert run.returncode == 2
    assert "does not exist" in run.stderr
