"""allcores.Pool against multiprocessing.Pool: same calls, same results, same exception types."""

from __future__ import annotations

import multiprocessing
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import allcores
from _tasks import (
    CustomError,
    Unpicklable,
    UnpicklableInWorker,
    add,
    double,
    fail_on,
    failing_initializer,
    identity,
    initializer_sets_state,
    kw,
    raise_custom,
    raise_two_arg,
    read_state,
    return_lock,
)
from allcores.errors import ArgumentPicklingError, PoolClosedError, RemoteTraceback

pytestmark = pytest.mark.timeout(60)

# (method, args) pairs run against both pools; results must match exactly.
CALLS = [
    ("map", lambda: (double, range(50))),
    ("map", lambda: (double, [])),
    ("map", lambda: (double, iter(range(7)))),
    ("map", lambda: (double, range(1000), 7)),
    ("starmap", lambda: (add, [(1, 2), (3, 4), (5, 6)])),
    ("imap", lambda: (double, range(30))),
    ("imap", lambda: (double, (x for x in range(30)), 4)),
    ("apply", lambda: (kw, (1,), {"b": 2, "c": 3})),
]


@pytest.fixture(scope="module")
def std_pool():
    with multiprocessing.get_context("fork").Pool(2) as pool:
        yield pool


@pytest.mark.parametrize(("method", "args"), CALLS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CALLS)])
def test_same_results_as_the_standard_pool(method, args):
    def run(pool):
        fresh = args()
        result = getattr(pool, method)(*fresh)
        return list(result) if method == "imap" else result

    with multiprocessing.get_context("fork").Pool(2) as std:
        expected = run(std)
    with allcores.Pool(2) as pool:
        assert run(pool) == expected


def test_imap_unordered_has_the_same_items():
    with allcores.Pool(2) as pool:
        assert sorted(pool.imap_unordered(double, range(100))) == [2 * x for x in range(100)]


@pytest.mark.parametrize(
    ("fn", "error_type"),
    [(fail_on, ValueError), (raise_custom, CustomError), (lambda x: 1 // (x - x), ZeroDivisionError)],
)
def test_same_exception_types_as_the_standard_pool(fn, error_type):
    with allcores.Pool(2) as pool, pytest.raises(error_type) as info:
        pool.map(fn, range(5))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "Traceback" in str(info.value.__cause__)
    assert any("raised by item" in note for note in getattr(info.value, "__notes__", []))


def test_async_results_callbacks_and_states():
    got, errors = [], []
    with allcores.Pool(2) as pool:
        ok = pool.apply_async(add, (2, 3), callback=got.append)
        bad = pool.apply_async(fail_on, (3,), error_callback=errors.append)
        mapped = pool.map_async(double, range(5), callback=got.append)
        star = pool.starmap_async(add, [(1, 1)])
        assert ok.get(timeout=10) == 5
        assert mapped.get(timeout=10) == [0, 2, 4, 6, 8]
        assert star.get(timeout=10) == [2]
        bad.wait(10)
        assert bad.ready() and not bad.successful()
        with pytest.raises(ValueError, match="bad item 3"):
            bad.get()
    assert 5 in got and [0, 2, 4, 6, 8] in got
    assert isinstance(errors[0], ValueError)


def test_get_timeout_raises_multiprocessing_timeout_error():
    with allcores.Pool(1) as pool:
        result = pool.apply_async(__import__("time").sleep, (5,))
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.05)
        with pytest.raises(ValueError):
            result.successful()


def test_close_join_and_submit_after_close():
    pool = allcores.Pool(2)
    result = pool.map_async(double, range(10))
    pool.close()
    pool.join()
    assert result.get(timeout=1) == [2 * x for x in range(10)]
    with pytest.raises(ValueError):  # like multiprocessing.Pool ("Pool not running")
        pool.map(double, [1])
    with pytest.raises(PoolClosedError):
        pool.apply(double, (1,))


def test_join_before_close_is_an_error_as_in_the_standard_pool():
    with allcores.Pool(1) as pool, pytest.raises(ValueError):
        pool.join()


def test_terminate_fails_pending_results_instead_of_hanging():
    pool = allcores.Pool(1)
    pending = pool.apply_async(__import__("time").sleep, (30,))
    pool.terminate()
    with pytest.raises(PoolClosedError):
        pending.get(timeout=10)
    pool.join()


@pytest.mark.timeout(120)
def test_lambdas_closures_and_nested_functions_under_every_start_method(start_method):
    offset = 10

    def nested(x):
        return x + offset

    with allcores.Pool(2, context=start_method) as pool:
        assert pool.map(lambda x: x * 3, range(5)) == [0, 3, 6, 9, 12]
        assert pool.map(nested, [1, 2]) == [11, 12]
        assert pool.apply(lambda a, b=1: a - b, (5,), {"b": 2}) == 3


def test_unpicklable_argument_names_the_argument_and_the_fix():
    with allcores.Pool(2) as pool:
        with pytest.raises(TypeError) as info:  # the type the standard pool raises
            pool.map(identity, [1, Unpicklable(), 3])
        assert isinstance(info.value, ArgumentPicklingError)
        assert isinstance(info.value, pickle.PicklingError)
        assert "Unpicklable" in str(info.value) and "cannot be pickled" in str(info.value)
        import threading

        with pytest.raises(TypeError, match="allcores.Lock"):
            pool.apply(identity, (threading.Lock(),))
        # the pool is still fine afterwards
        assert pool.map(double, [1, 2]) == [2, 4]


def test_argument_that_fails_to_unpickle_in_the_worker_fails_alone():
    with allcores.Pool(2) as pool:
        results = pool.map(identity, [1, UnpicklableInWorker(), 3], on_error="collect")
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ArgumentPicklingError)
    assert "could not be unpickled in the worker" in str(results[1])


def test_unpicklable_result_names_the_result():
    with allcores.Pool(2) as pool:
        results = pool.map(return_lock, range(3), on_error="collect")
    assert all(isinstance(r, allcores.errors.ResultPicklingError) for r in results)
    assert "cannot be pickled" in str(results[0])


def test_exception_that_cannot_unpickle_keeps_its_name():
    with allcores.Pool(1) as pool, pytest.raises(allcores.errors.AllcoresError, match="TwoArgError"):
        pool.map(raise_two_arg, [1])


def test_initializer_and_worker_state():
    with allcores.Pool(2, initializer=initializer_sets_state, initargs=("loaded",)) as pool:
        results = pool.map(read_state, range(20), chunksize=1)
    assert {value for value, _ in results} == {"loaded"}
    assert {worker for _, worker in results} <= {0, 1}


def test_failing_initializer_fails_the_call_instead_of_respawning_forever():
    with allcores.Pool(2, initializer=failing_initializer) as pool:
        with pytest.raises(OSError, match="initializer could not open"):
            pool.map(double, range(10))


def test_maxtasksperchild_replaces_workers():
    with allcores.Pool(1, maxtasksperchild=5) as pool:
        pids = pool.map(_pid, range(20), chunksize=1)
    assert len(set(pids)) >= 4


def _pid(_):
    import os

    return os.getpid()


def test_worker_current_outside_a_worker_is_an_error():
    with pytest.raises(RuntimeError, match="only inside a task"):
        allcores.worker.current()


@settings(max_examples=15, deadline=None)
@given(
    items=st.lists(st.integers(-1000, 1000), max_size=300),
    chunksize=st.one_of(st.none(), st.integers(1, 50)),
)
def test_results_equal_builtin_map_for_any_chunking(items, chunksize):
    with allcores.Pool(2) as pool:
        assert pool.map(double, items, chunksize) == list(map(double, items))
        assert list(pool.imap(double, iter(items), chunksize)) == list(map(double, items))
