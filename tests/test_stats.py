"""Run statistics: on every call, with real pools, and the bounded per-chunk records."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _tasks
import allcores
from allcores._engine import recording
from allcores._engine.recording import Span, compact

pytestmark = pytest.mark.timeout(120)


def _shares_add_up(stats) -> None:
    total = stats.efficiency + sum(dataclasses.astuple(stats.losses))
    assert total == pytest.approx(1.0, abs=0.02)


def test_map_results_carry_the_calls_statistics():
    results = allcores.map(_tasks.spin, [20_000] * 40, workers=2)
    stats = results.stats
    assert isinstance(stats, allcores.RunStats)
    assert stats.scope == "call"
    assert stats.items == 40
    assert stats.workers == 2
    assert [w.worker for w in stats.per_worker] == [0, 1]
    assert sum(w.tasks for w in stats.per_worker) == 40
    assert stats.chunks == sum(w.chunks for w in stats.per_worker) >= 2
    assert stats.busy_seconds > 0
    assert stats.speedup == pytest.approx(stats.busy_seconds / stats.wall_seconds)
    assert stats.items_per_second == pytest.approx(40 / stats.wall_seconds)
    assert stats.function == "_tasks.spin"
    assert stats.crashes == stats.timeouts == stats.retries == stats.recycled == 0
    assert stats.peak_rss > 0
    _shares_add_up(stats)
    for w in stats.per_worker:  # each worker's parts fill the wall time, no more
        parts = (w.busy_seconds + w.transfer_seconds + w.startup_seconds + w.tail_seconds
                 + w.idle_seconds)
        assert parts == pytest.approx(stats.wall_seconds, rel=0.02, abs=1e-3)
    # The timeline: one span per chunk, inside the run, on the right worker.
    assert sum(s.items for s in stats.spans) == 40
    assert all(0 <= s.start <= s.end <= stats.wall_seconds + 1e-3 for s in stats.spans)
    assert stats.chunk_sizes and all(size >= 1 for _, size in stats.chunk_sizes)
    assert "items ran" in stats.verdict()
    assert "worker" in stats.summary()
    data = stats.to_dict()
    assert data["items"] == 40 and len(data["per_worker"]) == 2 and "spans" not in data


def test_busy_time_matches_the_work_done():
    """Spans are stamped in the workers on the manager's clock: busy time is the sleep time."""
    results = allcores.map(functools.partial(_tasks.sleep_then, seconds=0.02), range(20),
                           workers=2, chunksize=1)
    stats = results.stats
    assert stats.busy_seconds == pytest.approx(20 * 0.02, rel=0.5)
    assert stats.chunks == 20
    assert stats.speedup > 1.0  # two workers slept at once


def test_unordered_map_and_imap_have_statistics():
    out = allcores.map(abs, range(-50, 50), workers=2, ordered=False)
    assert out.stats.items == 100
    with allcores.Pool(2) as pool:
        it = pool.imap(abs, range(100))
        assert sorted(it) == sorted(abs(x) for x in range(100))
        assert it.stats.items == 100


def test_crash_timeout_retry_and_recycling_are_counted():
    with allcores.Pool(2, maxtasksperchild=5) as pool:
        out = pool.map(functools.partial(_tasks.exit_on, bad=7), range(20), on_error="collect")
        assert isinstance(out[7], allcores.WorkerCrashedError)
        stats = out.stats
        assert stats.crashes >= 1
        assert stats.recycled >= 1
        crash = next(e for e in stats.incidents if e.kind == "crash")
        assert crash.worker in (0, 1) and 0 <= crash.time <= stats.wall_seconds
        assert sum(w.crashes for w in stats.per_worker) == stats.crashes
        assert "crash" in stats.verdict()
        timed = pool.map(functools.partial(_tasks.hang_on, bad=1), range(3), timeout=0.5,
                         on_error="collect")
        assert timed.stats.timeouts == 1
        retried = pool.map(functools.partial(_tasks.fail_on, bad=2), range(4), retries=2,
                           retry_on=(ValueError,), on_error="collect")
        assert retried.stats.retries == 2
        whole = pool.statistics()
    assert whole.scope == "pool"
    assert whole.crashes == stats.crashes + 0 and whole.timeouts == 1 and whole.retries == 2
    assert whole.items == sum(s.items for s in (stats, timed.stats, retried.stats))
    assert sum(w.starts for w in whole.per_worker) >= 2 + whole.crashes + whole.timeouts


def test_pool_and_executor_statistics_cover_every_call():
    with allcores.Pool(2) as pool:
        pool.map(abs, range(100))
        pool.apply(abs, (-3,))
        stats = pool.statistics()
    assert stats.items == 101
    assert "abs" in stats.function
    _shares_add_up(stats)
    with allcores.Executor(2) as ex:
        assert list(ex.map(abs, range(30))) == list(range(30))
        assert ex.submit(abs, -1).result() == 1
        stats = ex.statistics()
    assert stats.items == 31 and stats.workers == 2


def test_records_stay_bounded_for_a_long_imap(monkeypatch):
    """An endless imap keeps a bounded number of records; the sums stay exact."""
    monkeypatch.setattr(recording, "MAX_RECORDS", 200)
    count = 3_000
    with allcores.Pool(2) as pool:
        it = pool.imap(abs, (x for x in range(count)), chunksize=1)
        assert sum(1 for _ in it) == count
        stats = it.stats
        pool_stats = pool.statistics()
    assert stats.items == count and stats.chunks == count
    assert len(stats.spans) <= 200
    assert any(s.chunks > 1 for s in stats.spans)
    assert len(pool_stats.spans) <= 200 and pool_stats.items == count


def test_recording_can_be_switched_off_for_the_overhead_benchmark(monkeypatch):
    monkeypatch.setattr(recording, "ENABLED", False)
    with allcores.Pool(2) as pool:
        assert pool.map(abs, range(10)) == list(range(10))
        assert pool.statistics().items == 0


def test_import_allcores_does_not_import_the_report_library():
    code = "import sys, allcores; allcores.RunStats; print('bokeh' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


_spans = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 2), st.floats(0, 100), st.floats(0, 1),
              st.integers(1, 50), st.integers(1, 4)),
    min_size=1, max_size=400,
)


@settings(max_examples=60, deadline=None)
@given(_spans, st.integers(4, 100))
def test_compact_keeps_every_sum(raw, target):
    spans = [Span(w, j, t, t + d, n, d * 0.9, d * 0.01, 0.0, c, 1000 * n)
             for w, j, t, d, n, c in raw]
    merged = compact(spans, target)
    assert sum(s.items for s in merged) == sum(s.items for s in spans)
    assert sum(s.chunks for s in merged) == sum(s.chunks for s in spans)
    assert math.isclose(sum(s.busy for s in merged), sum(s.busy for s in spans), abs_tol=1e-6)
    assert max(s.rss for s in merged) == max(s.rss for s in spans)
    lanes = len({(s.worker, s.job) for s in spans})
    if len(spans) > target:  # each worker's and call's lane holds at most its buckets (+1)
        assert len(merged) <= lanes * (max(1, target // lanes) + 1)
    assert min(s.start for s in merged) == min(s.start for s in spans)
    assert max(s.end for s in merged) == max(s.end for s in spans)


def test_batched_tiny_applies_are_recorded_one_by_one():
    """Single-item jobs travel to a worker in batches; each still gets its own record."""
    with allcores.Pool(2) as pool:
        handles = [pool.apply_async(abs, (-i,)) for i in range(300)]
        assert [h.get(timeout=60) for h in handles] == list(range(300))
        stats = pool.statistics()
    assert stats.items == 300 and stats.chunks == 300
    assert sum(w.tasks for w in stats.per_worker) == 300
    assert all(0 <= s.start <= s.end for s in stats.spans)


def test_cpu_time_tells_waiting_from_working():
    """A task that sleeps is in the task for its wall time but gets almost no CPU; the verdict
    says so instead of claiming the speedup the wall times imply."""
    out = allcores.map(functools.partial(_tasks.sleep_then, seconds=0.05), range(10), workers=2)
    stats = out.stats
    assert stats.busy_seconds >= 0.4
    assert stats.cpu_seconds < 0.5 * stats.busy_seconds
    assert sum(w.cpu_seconds for w in stats.per_worker) == pytest.approx(stats.cpu_seconds)
    assert "got a CPU for only" in stats.verdict()


def test_the_overhead_benchmark_runs(tmp_path):
    """benchmarks/stats_overhead.py reaches into the engine (it detaches the recorder): keep it
    working as the engine changes. One round: a smoke test, not a measurement."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "stats_overhead.py"
    out = tmp_path / "o.json"
    run = subprocess.run([sys.executable, str(script), "--rounds", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    assert figures["W1"]["on_s"] > 0 and figures["W1"]["off_s"] > 0
    assert 0 < figures["per_chunk_s"] < 1e-3


def test_many_one_chunk_calls_keep_the_pool_record_bounded():
    """apply_async in a loop makes one call per chunk: past MAX_RECORDS the pool-wide list must
    shrink (it stayed at MAX_RECORDS and was compacted again on every chunk: each call then
    cost O(MAX_RECORDS), a pool slowing to a crawl after 50,000 calls)."""
    from allcores._engine.recording import MAX_RECORDS, CallRecord, Recorder

    recorder = Recorder(2)
    for job in range(MAX_RECORDS + 1):
        start = job * 1e-4
        recorder.chunk(CallRecord(job, "f", 2),
                       Span(job % 2, job, start, start + 5e-5, 1, 5e-5, 0.0, 0.0, 1, 1000), 0.0)
    assert len(recorder.spans) <= MAX_RECORDS // 2
    assert sum(s.items for s in recorder.spans) == MAX_RECORDS + 1
    assert sum(s.chunks for s in recorder.spans) == MAX_RECORDS + 1
