"""apply_async / submit in a loop: tiny single-item jobs share messages (RunBatch) while each
keeps its own result, error, crash report and retry. Real processes throughout."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

import allcores
from _tasks import add, double, exit_on, fail_on
from allcores._engine import manager as manager_module

pytestmark = pytest.mark.timeout(120)

N = 400


@pytest.fixture
def batches(monkeypatch):
    """Counts the batches the manager sends (the engine itself runs unchanged)."""
    sent: list[int] = []
    original = manager_module.Manager._send_batch

    def counting(self, handle, batch, now):
        sent.append(len(batch))
        return original(self, handle, batch, now)

    monkeypatch.setattr(manager_module.Manager, "_send_batch", counting)
    return sent


def _warm(pool, fn, *args):
    """One call alone, so the function's cost is learned and the next calls can be batched."""
    assert pool.apply_async(fn, args).get(timeout=30) is not None


def test_mixed_functions_share_batches_and_keep_their_own_results(batches):
    with allcores.Pool(2) as pool:
        _warm(pool, double, 1)
        _warm(pool, add, 1, 2)
        results = [
            pool.apply_async(double, (i,)) if i % 2 else pool.apply_async(add, (i, 1))
            for i in range(N)
        ]
        assert [r.get(timeout=60) for r in results] == [
            2 * i if i % 2 else i + 1 for i in range(N)
        ]
    assert batches and max(batches) > 1  # they did travel together


def test_an_error_in_a_batch_is_that_job_alone(batches):
    seen = []
    with allcores.Pool(2) as pool:
        _warm(pool, fail_on, 0)
        results = [pool.apply_async(fail_on, (i % 10,), error_callback=seen.append)
                   for i in range(N)]
        for i, r in enumerate(results):
            if i % 10 == 3:
                with pytest.raises(ValueError, match="bad item 3"):
                    r.get(timeout=60)
            else:
                assert r.get(timeout=60) == i % 10
    assert batches and max(batches) > 1
    assert len(seen) == N // 10 and all(isinstance(e, ValueError) for e in seen)


def test_a_crash_in_a_batch_fails_only_the_culprit(batches):
    with allcores.Pool(2) as pool:
        _warm(pool, exit_on, 0)
        results = [pool.apply_async(exit_on, (i, 150)) for i in range(N)]
        for i, r in enumerate(results):
            if i == 150:
                with pytest.raises(allcores.WorkerCrashedError, match="item 0 = "):
                    r.get(timeout=60)
            else:
                assert r.get(timeout=60) == i
        assert pool.apply_async(exit_on, (1, 150)).get(timeout=30) == 1  # the pool lives on
    assert batches and max(batches) > 1


def test_executor_futures_in_batches_keep_their_own_retries(tmp_path):
    with allcores.Executor(2, retries=1, retry_on=ValueError) as ex:
        assert ex.submit(double, 1).result(timeout=30) == 2
        futures = [ex.submit(fail_on, i % 10) for i in range(N)]
        done = list(cf.as_completed(futures, timeout=60))
        assert len(done) == N
        for i, f in enumerate(futures):
            if i % 10 == 3:
                assert isinstance(f.exception(), ValueError)  # retried once, then failed
            else:
                assert f.result() == i % 10


def test_a_cancelled_future_in_a_batch_never_runs():
    with allcores.Executor(1) as ex:
        assert ex.submit(double, 1).result(timeout=30) == 2
        futures = [ex.submit(double, i) for i in range(N)]
        cancelled = [f for f in futures[N // 2:] if f.cancel()]
        for f in futures:
            if f in cancelled:
                assert f.cancelled()
            else:
                assert f.result(timeout=60) == 2 * futures.index(f)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind,calls", [("apply_async", 1_000_000), ("submit", 100_000)])
def test_a_million_pending_calls_stay_small(kind, calls):
    """Pending calls wait in the parent as small records (jobs.Call), never in a pipe: with
    both workers held up, a million apply_async calls return at once and hold well under
    2 KB each (docs/design.md gives the figure); terminate fails them all promptly."""
    read_end, write_end = os.pipe()
    pool = allcores.Pool(2) if kind == "apply_async" else allcores.Executor(2)
    try:
        def call(fn, *args):
            return pool.apply_async(fn, args) if kind == "apply_async" else pool.submit(fn, *args)

        blockers = [call(os.read, read_end, 1) for _ in range(2)]  # both workers held
        before = _rss()
        pending = [call(double, i) for i in range(calls)]
        grown = _rss() - before
        assert grown / calls < 2048, f"{grown / calls:.0f} bytes per pending call"
        os.write(write_end, b"xx")
        first = blockers[0].get(timeout=60) if kind == "apply_async" else blockers[0].result(60)
        assert first == b"x"
        if kind == "apply_async":
            assert pending[0].get(timeout=60) == 0  # they do run once the workers are free
        else:
            assert pending[0].result(timeout=60) == 0
    finally:
        if kind == "apply_async":
            pool.terminate()
        else:
            pool.shutdown(wait=True, cancel_futures=True)
        os.close(read_end)
        os.close(write_end)
    last = pending[-1]
    if kind == "apply_async":
        with pytest.raises(allcores.PoolClosedError):
            last.get(timeout=60)
    else:
        assert last.cancelled() or last.done()


def test_a_pending_single_call_can_be_cancelled_through_the_engine():
    """engine.cancel takes the handle start() returned, a one-item Call included."""
    from concurrent.futures import CancelledError

    from allcores._engine.jobs import ListSink

    read_end, write_end = os.pipe()
    with allcores.Pool(1) as pool:
        blocker = pool.apply_async(os.read, (read_end, 1))
        engine = pool._engine
        sink = ListSink(single=True)
        handle = engine.start(double, [21], sink)
        engine.cancel(handle, CancelledError())
        assert sink.done.wait(30)
        with pytest.raises(CancelledError):
            sink.value()
        os.write(write_end, b"x")
        assert blocker.get(timeout=30) == b"x"
        assert pool.apply_async(double, (4,)).get(timeout=30) == 8  # the pool goes on
    os.close(read_end)
    os.close(write_end)


@pytest.fixture
def jobs_made(monkeypatch):
    """Counts the Jobs the engine makes (it runs unchanged)."""
    from allcores._engine import jobs as jobs_module

    made: list[int] = []
    original = jobs_module.Job.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(jobs_module.Job, "__init__", counting)
    return made


def test_tiny_calls_that_succeed_are_settled_without_a_job_each(jobs_made):
    """Once a function's cost is learned, its tiny calls travel as they are (jobs.CallChunk):
    a successful one is settled on its own result, with no Job made for it, and the pool's
    statistics still count every call (on the old engine each call became a Job)."""
    with allcores.Pool(2) as pool:
        _warm(pool, double, 1)
        before = len(jobs_made)
        results = [pool.apply_async(double, (i,)) for i in range(N)]
        assert [r.get(timeout=60) for r in results] == [2 * i for i in range(N)]
        assert len(jobs_made) - before < N // 10
        stats = pool.statistics()
        assert stats.items == N + 1
        assert stats.busy_seconds > 0


def test_tiny_calls_failing_after_the_light_way_keep_their_retries_and_callbacks(jobs_made):
    """A tiny call sent without a job that fails becomes a job there (retried, its error
    callback run); its batch neighbours are settled the light way."""
    errors: list[BaseException] = []
    values: list[int] = []
    with allcores.Pool(2) as pool:
        _warm(pool, fail_on, 0)
        before = len(jobs_made)
        results = [
            pool.apply_async(fail_on, (i % 10,), callback=values.append,
                             error_callback=errors.append)
            for i in range(N)
        ]
        for i, r in enumerate(results):
            if i % 10 == 3:
                with pytest.raises(ValueError, match="bad item 3"):
                    r.get(timeout=60)
            else:
                assert r.get(timeout=60) == i % 10
        made = len(jobs_made) - before
    assert N // 10 <= made < N // 5  # a job for each failed call, about none for the others
    assert len(errors) == N // 10 and len(values) == N - N // 10


def test_terminate_fails_tiny_calls_in_flight_and_pending_at_once():
    """Calls on the light way (in flight or waiting) all end when the pool is terminated."""
    pool = allcores.Pool(2)
    _warm(pool, double, 1)
    results = [pool.apply_async(double, (i,)) for i in range(20_000)]
    pool.terminate()
    outcomes = {"ok": 0, "closed": 0}
    for r in results:
        try:
            r.get(timeout=60)
            outcomes["ok"] += 1
        except allcores.PoolClosedError:
            outcomes["closed"] += 1
    assert sum(outcomes.values()) == len(results)


def _result_or_lock(x):
    import threading

    return threading.Lock() if x == 7 else x


def test_an_unpicklable_result_in_a_batch_says_why_as_a_chunk_does(batches):
    """A batched call whose result cannot be pickled fails alone with the same
    MaybeEncodingError a chunk gives: the reason and the value (the batch path left them out)."""
    import multiprocessing.pool

    with allcores.Pool(2) as pool:
        _warm(pool, _result_or_lock, 0)
        results = [pool.apply_async(_result_or_lock, (i,)) for i in range(N)]
        for i, r in enumerate(results):
            if i == 7:
                with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
                    r.get(timeout=60)
                assert "lock" in info.value.exc and "lock" in info.value.value
            else:
                assert r.get(timeout=60) == i
    assert batches and max(batches) > 1
