"""allcores.Executor against concurrent.futures.ProcessPoolExecutor."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import allcores
from _tasks import add, double, exit_on, fail_on, kw, sleep_then
from allcores.errors import PoolClosedError, WorkerCrashedError

pytestmark = pytest.mark.timeout(60)


def test_submit_returns_standard_futures():
    with allcores.Executor(2) as ex:
        futures = [ex.submit(add, i, i) for i in range(20)]
        assert all(isinstance(f, cf.Future) for f in futures)
        assert sorted(f.result() for f in cf.as_completed(futures)) == [2 * i for i in range(20)]
        done, not_done = cf.wait(futures, timeout=10)
        assert len(done) == 20 and not not_done
        assert ex.submit(kw, 1, b=2, c=3).result() == (1, 2, 3)


def test_map_matches_process_pool_executor():
    with cf.ProcessPoolExecutor(2) as std:
        expected = list(std.map(add, range(10), range(10, 30)))
    with allcores.Executor(2) as ex:
        assert list(ex.map(add, range(10), range(10, 30))) == expected
        assert list(ex.map(double, range(100), chunksize=7)) == [2 * x for x in range(100)]
        assert list(ex.map(double, range(50), buffersize=4)) == [2 * x for x in range(50)]


def test_map_raises_the_task_error_on_iteration():
    with allcores.Executor(2) as ex:
        results = ex.map(fail_on, range(10))
        with pytest.raises(ValueError, match="bad item 3"):
            list(results)


def test_map_timeout_raises_timeout_error():
    with allcores.Executor(1) as ex:
        results = ex.map(sleep_then, [1, 2], [5, 5], timeout=0.2)
        with pytest.raises(TimeoutError):
            list(results)


def test_exception_from_submit():
    with allcores.Executor(1) as ex:
        future = ex.submit(fail_on, 3)
        assert isinstance(future.exception(timeout=10), ValueError)


def test_crash_fails_only_its_future_and_the_executor_stays_usable():
    with allcores.Executor(2) as ex:
        futures = [ex.submit(exit_on, i, 5) for i in range(10)]
        errors = [f.exception(timeout=20) for f in futures]
        assert isinstance(errors[5], WorkerCrashedError)
        assert isinstance(errors[5], BrokenProcessPool)  # existing handlers still catch it
        assert [f.result() for i, f in enumerate(futures) if i != 5] == [i for i in range(10) if i != 5]
        assert ex.submit(add, 1, 1).result(timeout=10) == 2


def test_shutdown_cancel_futures_and_submit_after_shutdown():
    ex = allcores.Executor(1)
    running = ex.submit(sleep_then, "first", 0.3)
    queued = [ex.submit(double, i) for i in range(50)]
    ex.shutdown(wait=True, cancel_futures=True)
    # Every future is settled: the one already running finished, the rest ran or were cancelled
    # (whether "first" had started when shutdown() came is a race, as in ProcessPoolExecutor).
    assert running.cancelled() or running.result() == "first"
    assert all(f.done() for f in queued)
    assert any(f.cancelled() for f in queued)
    assert all(f.result() == 2 * i for i, f in enumerate(queued) if not f.cancelled())
    with pytest.raises(RuntimeError):  # as ProcessPoolExecutor
        ex.submit(double, 1)
    with pytest.raises(PoolClosedError):
        ex.submit(double, 1)


def test_asyncio_run_in_executor():
    async def main(ex):
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, double, i) for i in range(5)))

    with allcores.Executor(2) as ex:
        assert asyncio.run(main(ex)) == [0, 2, 4, 6, 8]


def test_lambdas_work_in_submit():
    with allcores.Executor(2) as ex:
        assert ex.submit(lambda: "lambda ok").result() == "lambda ok"
        start = time.monotonic()
        assert ex.submit(lambda x: x + 1, 1).result(timeout=10) == 2
        assert time.monotonic() - start < 10
