"""Code written for the standard pools runs unchanged on allcores (issue 9, points 1-6).

Each behaviour is checked under fork, spawn and forkserver, on the first worker and on
replacement workers: after a crash, after a timeout, and under ``maxtasksperchild=1`` (every
task on a fresh worker). Pools have one worker, so "the worker" is always the one just replaced.
Where the standard library's answer is not fixed by its documentation alone (imap over an
input that raises), the test asks the standard pool itself in the same run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures.process import _RemoteTraceback

import pytest

import _dropin_tasks as t
import _tasks
import allcores
from allcores.errors import TaskTimeoutError, WorkerCrashedError

pytestmark = pytest.mark.timeout(120)

METHODS = ["fork", "spawn", "forkserver"]
QUEUE_WAIT = 30.0  # seconds: a bound for the test, never reached when things work


# -- walking a pool through its generations of workers ----------------------------------------


def _crash(pool) -> None:
    if isinstance(pool, allcores.Pool):
        with pytest.raises(WorkerCrashedError):
            pool.apply(_tasks.exit_on, (37,))
    else:
        with pytest.raises(WorkerCrashedError):
            pool.submit(_tasks.exit_on, 37).result()


def _time_out(pool) -> None:
    with pytest.raises(TaskTimeoutError):
        if isinstance(pool, allcores.Pool):
            pool.map(_tasks.hang_on, [3], timeout=0.5)
        else:
            pool.submit(_tasks.hang_on, 3).result()


def walk_pool(make: Callable[..., allcores.Pool], check: Callable[[allcores.Pool], object]) -> list:
    """``check`` on the first worker, after a crash, after a timeout, and on the first two
    workers of a maxtasksperchild=1 pool; returns what each check returned."""
    seen = []
    with make() as pool:
        seen.append(check(pool))
        _crash(pool)
        seen.append(check(pool))
        _time_out(pool)
        seen.append(check(pool))
    with make(maxtasksperchild=1) as pool:
        seen.append(check(pool))
        seen.append(check(pool))
    return seen


def walk_executor(make: Callable[..., allcores.Executor], check, after_timeout=False) -> list:
    """As :func:`walk_pool` for the Executor. Its timeouts are per executor (``timeout=``), so
    the timeout generation needs an executor of its own whose checks run under that limit, and
    the limit counts a spawned replacement's start: it is generous, so it costs its full length
    in waiting for the hung task, and only the initializer test (the one behaviour a replacement
    worker could get wrong by itself) walks it; the Pool walks cover it for every behaviour."""
    seen = []
    with make() as ex:
        seen.append(check(ex))
        _crash(ex)
        seen.append(check(ex))
    if after_timeout:
        with make(timeout=8.0) as ex:
            _time_out(ex)
            seen.append(check(ex))
    with make(max_tasks_per_child=1) as ex:
        seen.append(check(ex))
        seen.append(check(ex))
    return seen


# -- 1. multiprocessing synchronization objects as initargs -----------------------------------


def _sync_objects(ctx, manager):
    return (
        ctx.Lock(),
        ctx.RLock(),
        ctx.Semaphore(2),
        ctx.Event(),
        ctx.Value("i", 0),
        ctx.Array("i", [0, 0]),
        ctx.Queue(),
        manager.list(),
    )


@pytest.mark.parametrize("method", METHODS)
def test_sync_objects_as_pool_initargs(method):
    ctx = multiprocessing.get_context(method)
    with ctx.Manager() as manager:
        objects = _sync_objects(ctx, manager)
        lock, rlock, semaphore, event, value, array, queue, proxy = objects
        tags = iter(range(100))

        def check(pool):
            tag = next(tags)
            event.clear()
            pid = pool.apply(t.use_sync_objects, (tag,))
            assert queue.get(timeout=QUEUE_WAIT) == (tag, pid)
            assert event.is_set()
            return pid

        def make(**kw):
            return allcores.Pool(1, initializer=t.keep, initargs=objects, context=ctx, **kw)

        pids = walk_pool(make, check)
        assert len(set(pids)) == len(pids), "each check ran on a new worker"
        assert value.value == array[0] == len(pids)
        assert list(proxy) == list(range(len(pids)))


@pytest.mark.parametrize("method", METHODS)
def test_sync_objects_as_executor_initargs(method):
    ctx = multiprocessing.get_context(method)
    with ctx.Manager() as manager:
        objects = _sync_objects(ctx, manager)
        queue, value, proxy = objects[6], objects[4], objects[7]
        tags = iter(range(100))

        def check(ex):
            tag = next(tags)
            pid = ex.submit(t.use_sync_objects, tag).result()
            assert queue.get(timeout=QUEUE_WAIT) == (tag, pid)
            return pid

        def make(**kw):
            return allcores.Executor(1, mp_context=ctx, initializer=t.keep, initargs=objects,
                                     **kw)

        pids = walk_executor(make, check, after_timeout=True)
        assert len(set(pids)) == len(pids)
        assert value.value == len(pids)
        assert list(proxy) == list(range(len(pids)))


def test_the_issue_examples_under_the_default_start_method():
    """The two lines of the issue, verbatim: the default context, the module-level objects."""
    with allcores.Pool(2, initializer=t.keep, initargs=(multiprocessing.Event(),)) as pool:
        pool.apply(t.use_event, (0,))
        assert t.shared == ()  # the parent's copy was never touched: the worker's was
    event = multiprocessing.Event()
    with allcores.Executor(2, initializer=t.keep, initargs=(event,)) as ex:
        ex.submit(t.use_event, 0).result()
    assert event.is_set()


def test_initargs_that_cannot_travel_under_spawn_fail_the_constructor_clearly():
    """A threading.Lock cannot reach a spawned worker: the constructor raises the standard
    pool's TypeError, as an ArgumentPicklingError that says what to pass instead."""
    import threading

    with pytest.raises(TypeError) as info:
        allcores.Pool(1, initializer=t.keep, initargs=(threading.Lock(),), context="spawn")
    assert isinstance(info.value, allcores.errors.ArgumentPicklingError)
    assert "same start method" in str(info.value)


# -- 2. an argument whose pickling raises -----------------------------------------------------


def _notes(error: BaseException) -> str:
    return " ".join(getattr(error, "__notes__", []))


@pytest.mark.parametrize("method", METHODS)
def test_argument_pickling_error_keeps_its_type_in_pool(method):
    def check(pool):
        for call in (
            lambda: pool.apply(t.identity, (t.ReduceRaises(),)),
            lambda: pool.map(t.identity, [1, t.ReduceRaises(), 3]),
            lambda: pool.apply_async(t.identity, (t.ReduceRaises(),)).get(timeout=QUEUE_WAIT),
            lambda: list(pool.imap(t.identity, [t.ReduceRaises()])),
        ):
            with pytest.raises(RuntimeError, match="refuses to be pickled") as info:
                call()
            assert "cannot be pickled" in _notes(info.value)
        assert pool.apply(t.identity, (5,)) == 5  # still usable

    walk_pool(lambda **kw: allcores.Pool(1, context=method, **kw), check)


@pytest.mark.parametrize("method", METHODS)
def test_argument_pickling_error_keeps_its_type_in_executor(method):
    def check(ex):
        with pytest.raises(RuntimeError, match="refuses to be pickled") as info:
            ex.submit(t.identity, t.ReduceRaises()).result()
        assert "cannot be pickled" in _notes(info.value)
        with pytest.raises(RuntimeError, match="refuses to be pickled"):
            list(ex.map(t.identity, [1, t.ReduceRaises()]))
        assert ex.submit(t.identity, 5).result() == 5

    walk_executor(lambda **kw: allcores.Executor(1, mp_context=method, **kw), check)


# -- 3. a result that cannot be pickled --------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_unpicklable_result_is_maybe_encoding_error_in_pool(method):
    def check(pool):
        for kind in ("lock", "reduce"):
            with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
                pool.apply(t.make_unpicklable, (kind,))
            error = info.value
            assert isinstance(error, allcores.errors.ResultPicklingError)
            assert ("lock" if kind == "lock" else "refuses") in error.exc  # repr of the reason
            assert ("lock" if kind == "lock" else "ReduceRaises") in error.value
            with pytest.raises(multiprocessing.pool.MaybeEncodingError):
                pool.map(t.make_unpicklable, [kind])
        return pool.apply(os.getpid)

    walk_pool(lambda **kw: allcores.Pool(1, context=method, **kw), check)


@pytest.mark.parametrize("method", METHODS)
def test_unpicklable_result_raises_the_pickling_error_type_in_executor(method):
    """ProcessPoolExecutor raises what pickling the result raised (its own type)."""

    def check(ex):
        with pytest.raises(TypeError, match="lock"):
            ex.submit(t.make_unpicklable, "lock").result()
        with pytest.raises(RuntimeError, match="refuses to be pickled") as info:
            ex.submit(t.make_unpicklable, "reduce").result()
        assert "cannot be pickled" in _notes(info.value)
        with pytest.raises(RuntimeError, match="refuses to be pickled"):
            list(ex.map(t.make_unpicklable, ["reduce"]))

    walk_executor(lambda **kw: allcores.Executor(1, mp_context=method, **kw), check)


# -- 4. the remote traceback -------------------------------------------------------------------


def _check_cause(error: BaseException, cls: type) -> None:
    cause = error.__cause__
    assert isinstance(cause, cls)
    assert "_fail_inner" in cause.tb and "failed on 7" in cause.tb
    assert cause.tb.startswith('\n"""\n') and cause.tb.endswith('"""')  # the stdlib's framing
    assert str(cause) == cause.tb


@pytest.mark.parametrize("method", METHODS)
def test_remote_traceback_is_the_pool_class(method):
    def check(pool):
        with pytest.raises(ValueError) as info:
            pool.apply(t.fail_deep, (7,))
        _check_cause(info.value, multiprocessing.pool.RemoteTraceback)
        with pytest.raises(ValueError) as info:
            pool.map(t.fail_deep, [7])
        _check_cause(info.value, multiprocessing.pool.RemoteTraceback)

    walk_pool(lambda **kw: allcores.Pool(1, context=method, **kw), check)


@pytest.mark.parametrize("method", METHODS)
def test_remote_traceback_is_the_executor_class(method):
    def check(ex):
        with pytest.raises(ValueError) as info:
            ex.submit(t.fail_deep, 7).result()
        _check_cause(info.value, _RemoteTraceback)
        with pytest.raises(ValueError) as info:
            list(ex.map(t.fail_deep, [7]))
        _check_cause(info.value, _RemoteTraceback)

    walk_executor(lambda **kw: allcores.Executor(1, mp_context=method, **kw), check)


def test_remote_traceback_pickles():
    error = allcores.errors.remote_traceback("Traceback ...\n")
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, multiprocessing.pool.RemoteTraceback) and again.tb == error.tb


# -- 5. an input iterable that raises part-way ---------------------------------------------------


def drain(iterator, limit: int = 100) -> list:
    """Everything an imap iterator yields, with each exception as (type name, text), until it
    stops (or ``limit`` steps, so a broken iterator fails the test instead of hanging it)."""
    out: list = []
    for _ in range(limit):
        try:
            out.append(next(iterator))
        except StopIteration:
            return out
        except Exception as exc:
            out.append((type(exc).__name__, str(exc)))
    raise AssertionError(f"the iterator did not stop after {limit} steps: {out}")


CASES = [(count, chunksize) for count in (0, 1, 5) for chunksize in (None, 1, 2, 3)]


@pytest.fixture(scope="module")
def standard_imap() -> dict:
    """What multiprocessing.Pool.imap and imap_unordered do for each case (one worker)."""
    answers = {}
    with multiprocessing.get_context("fork").Pool(1) as pool:
        for count, chunksize in CASES:
            extra = {} if chunksize is None else {"chunksize": chunksize}
            ordered = drain(pool.imap(t.identity, t.items_then_raise(count), **extra))
            unordered = drain(pool.imap_unordered(t.identity, t.items_then_raise(count), **extra))
            answers[count, chunksize] = (ordered, unordered)
    return answers


@pytest.mark.parametrize("method", METHODS)
def test_imap_over_an_input_that_raises_part_way(method, standard_imap):
    def check(pool):
        for (count, chunksize), (ordered, unordered) in standard_imap.items():
            got = drain(pool.imap(t.identity, t.items_then_raise(count), chunksize))
            assert got == ordered, (count, chunksize)
            got = drain(pool.imap_unordered(t.identity, t.items_then_raise(count), chunksize))
            assert sorted(got[:-1]) == sorted(unordered[:-1]) and got[-1] == unordered[-1]
        assert pool.map(t.identity, range(4)) == [0, 1, 2, 3]  # the pool stays usable

    walk_pool(lambda **kw: allcores.Pool(1, context=method, **kw), check)


# -- 6. `with` on a pool that is no longer running ----------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("generation", ["first", "crash", "timeout", "maxtasksperchild"])
@pytest.mark.parametrize("stop", ["close", "terminate"])
def test_with_on_a_pool_that_is_not_running_raises_value_error(method, generation, stop):
    pool = allcores.Pool(1, context=method,
                         maxtasksperchild=1 if generation == "maxtasksperchild" else None)
    try:
        if generation == "crash":
            _crash(pool)
        elif generation == "timeout":
            _time_out(pool)
        else:
            assert pool.apply(t.identity, (1,)) == 1
        getattr(pool, stop)()
        with pytest.raises(ValueError, match="Pool not running"):
            with pool:
                pass
    finally:
        pool.terminate()
        pool.join()


# -- the Executor at interpreter exit (CPython's test_interpreter_shutdown and
# test_submit_after_interpreter_shutdown, whose child interpreters name their executor class) --

_AT_EXIT = """if 1:
    import allcores
    from _dropin_tasks import sleep_and_print
    if __name__ == "__main__":
        ex = allcores.Executor(2, mp_context={method!r})
        ex.submit(sleep_and_print, 0.5, "apple")
        {extra}
"""


def _run_child(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("extra", ["", "ex.shutdown(wait=False)"])
def test_submitted_work_finishes_at_interpreter_exit(method, extra):
    out = _run_child(_AT_EXIT.format(method=method, extra=extra))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip() == "apple"


def test_submit_from_an_atexit_handler_raises_runtime_error():
    code = """if 1:
        import atexit, allcores
        @atexit.register
        def run_last():
            try:
                ex.submit(id, None)
            except RuntimeError:
                print("runtime-error")
        if __name__ == "__main__":
            ex = allcores.Executor(1)
            ex.submit(id, None).result()
    """
    out = _run_child(code)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip() == "runtime-error"
