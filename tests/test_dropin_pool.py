"""multiprocessing.Pool behaviours, side by side: the standard pool and allcores.Pool.

Each scenario runs on a standard pool and on allcores.Pool under fork, spawn and forkserver,
and what the caller observes must be the same. The scenarios come from the standard library's
documentation and its ``Lib/multiprocessing/pool.py`` where no other test of ours covered them.
The standard pool runs under spawn: a fork from this (threaded) test process would trip
Python 3.12's warning about fork with threads.

Known, deliberate differences, not tested as equal here (docs/pool.md): ``map`` fails fast
(the standard pool runs every item before raising the first error); ``imap`` with an explicit
chunksize above 1 also delivers the results before a failed item inside its chunk (the standard
pool loses that chunk's results); workers may start processes of their own (not daemonic);
``map_async`` over an empty input calls its callback with ``[]``, as the documentation says
(the standard pool never calls it then).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import pickle

import pytest

import _dropin_tasks as t
import allcores

pytestmark = pytest.mark.timeout(120)

METHODS = ["fork", "spawn", "forkserver"]


def kind(exc: BaseException) -> tuple:
    """What a caller's ``except`` clauses see of an exception, comparable across pools."""
    if isinstance(exc, multiprocessing.pool.MaybeEncodingError):
        return ("MaybeEncodingError",)  # its text is the reprs of two objects: ours say more
    # allcores' own classes derive from the standard ones a caller catches: compare those.
    standard = next(c for c in type(exc).__mro__ if not c.__module__.startswith("allcores"))
    return (standard.__name__, str(exc))


def drain(iterator, limit: int = 100) -> list:
    """Everything an iterator yields, an exception standing as kind(exc), until it stops."""
    out: list = []
    for _ in range(limit):
        try:
            out.append(next(iterator))
        except StopIteration:
            return out
        except Exception as exc:
            out.append(kind(exc))
    raise AssertionError(f"the iterator did not stop after {limit} steps: {out}")


def attempt(call):
    try:
        return ("value", call())
    except Exception as exc:
        return kind(exc)


def with_callbacks(pool, method, *args):
    """An async call's result plus what its callback and error_callback received."""
    got: dict = {"callback": [], "error_callback": []}
    result = getattr(pool, method)(*args, callback=got["callback"].append,
                                   error_callback=lambda e: got["error_callback"].append(kind(e)))
    outcome = attempt(lambda: result.get(timeout=60))
    result.wait(60)
    return outcome, result.successful(), got["callback"], got["error_callback"]


SCENARIOS = {
    # imap raises a failed item's exception at its place and goes on (one item per task)...
    "imap goes on after an error": lambda p: drain(p.imap(t.fail_on, range(6))),
    "imap chunksize 1 goes on after an error": lambda p: drain(p.imap(t.fail_on, range(6), 1)),
    "imap_unordered goes on after an error": lambda p: sorted(
        drain(p.imap_unordered(t.fail_on, range(6))), key=repr),
    # ...and stops there when a task is a chunk of items (the error at a chunk's first item).
    "imap chunksize 2 stops at an error": lambda p: drain(p.imap(t.fail_on, range(6), 2)),
    "imap over nothing": lambda p: drain(p.imap(t.double, [])),
    "imap chunksize 0 is refused": lambda p: attempt(lambda: p.imap(t.double, [1], 0))[0],
    "map over a generator": lambda p: p.map(t.double, (x for x in range(5))),
    "map over nothing": lambda p: p.map(t.double, []),
    "map raises the task's exception": lambda p: attempt(lambda: p.map(t.fail_on, range(6))),
    "map_async callbacks": lambda p: with_callbacks(p, "map_async", t.double, range(4)),
    "map_async error_callback": lambda p: with_callbacks(p, "map_async", t.fail_on, range(4)),
    "apply_async callbacks": lambda p: with_callbacks(p, "apply_async", t.add, (1, 2)),
    "apply_async error_callback": lambda p: with_callbacks(p, "apply_async", t.fail_on, (2,)),
    "apply with kwds": lambda p: p.apply(t.kw, (1,), {"b": 2, "c": 3}),
    "starmap of lists": lambda p: p.starmap(t.add, [[1, 2], [3, 4]]),
    "starmap_async callbacks": lambda p: with_callbacks(p, "starmap_async", t.add, [(1, 2)]),
    "an exception that cannot be pickled": lambda p: attempt(
        lambda: p.apply(t.raise_unpicklable, (1,))),
    "a result that cannot be pickled": lambda p: attempt(
        lambda: p.apply(t.make_unpicklable, ("lock",))),
    "a pool cannot be pickled": lambda p: attempt(lambda: pickle.dumps(p)),  # same words
    "successful() before ready() is an error": lambda p: attempt(
        lambda: p.apply_async(t.sleep_and_print, (5, "")).successful())[0],
}


@pytest.fixture(scope="module")
def standard_pool():
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        yield pool


@pytest.fixture(scope="module", params=METHODS)
def our_pool(request):
    with allcores.Pool(2, context=request.param) as pool:
        yield pool


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_same_as_the_standard_pool(scenario, standard_pool, our_pool):
    run = SCENARIOS[scenario]
    assert run(our_pool) == run(standard_pool)


@pytest.mark.parametrize("method", METHODS)
def test_results_started_before_close_still_arrive(method):
    def run(pool):
        later = pool.imap(t.double, range(5))
        pending = pool.map_async(t.double, range(3))
        pool.close()
        closed = attempt(lambda: pool.apply(t.double, (1,)))
        out = (list(later), pending.get(timeout=60), closed[0])
        pool.join()
        return out

    with multiprocessing.get_context("spawn").Pool(2) as standard:
        expected = run(standard)
    with allcores.Pool(2, context=method) as ours:
        assert run(ours) == expected
