"""allcores.sync primitives as task arguments: real pools, every start method, no leaks."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import queue
import shutil
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor

import pytest

import allcores
from allcores.sync._limit import _limit_dir

METHODS = ["fork", "spawn", "forkserver"]
TIMEOUT = 60  # seconds any single wait in a task may take before the test fails


POOLS = [("multiprocessing", m) for m in METHODS] + [("allcores", m) for m in METHODS]


@pytest.fixture(scope="module", params=POOLS, ids=[f"{k}-{m}" for k, m in POOLS])
def mp_pool(request):
    kind, method = request.param
    ctx = multiprocessing.get_context(method)
    pool = ctx.Pool(2) if kind == "multiprocessing" else allcores.Pool(2, context=ctx)
    with pool:
        yield pool


# -- tasks (module level, so spawn workers can import them) -----------------------------------


def exercise(args):
    """Use every primitive once in a worker; return what it saw."""
    i, lock, rlock, sem, event, counter, value, q, conn = args
    with lock:
        value.value += 1.0
    with rlock, rlock:  # re-entrant in the same thread
        pass
    with sem:
        pass
    assert event.wait(TIMEOUT)
    n = counter.increment()
    q.put(("from-task", i))
    conn.send(i * 10)
    return n


def test_every_primitive_is_a_task_argument(mp_pool):
    prims = (allcores.Lock(), allcores.RLock(), allcores.Semaphore(2), allcores.Event(),
             allcores.Counter(), allcores.Value("d", 0.0), allcores.Queue())
    lock, rlock, sem, event, counter, value, q = prims
    parent_end, child_end = allcores.Pipe()
    event.set()
    ns = mp_pool.map(exercise, [(i, *prims, child_end) for i in range(6)], chunksize=1)
    assert sorted(ns) == [1, 2, 3, 4, 5, 6]
    assert counter.value == 6
    assert value.value == 6.0
    assert sorted(q.get(timeout=TIMEOUT) for _ in range(6)) == [("from-task", i) for i in range(6)]
    assert sorted(parent_end.recv() for _ in range(6)) == [i * 10 for i in range(6)]
    q.close()


def test_stdlib_refuses_what_we_accept():
    # The reason this package exists: the standard objects cannot travel in a task argument.
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(multiprocessing.Lock())
    assert pickle.loads(pickle.dumps(allcores.Lock())) is not None


def count_under_lock(args):
    lock, value, n = args
    for _ in range(n):
        with lock:
            v = value.value  # a read-modify-write that loses updates without the lock
            value.value = v + 1
    return n


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lock_gives_mutual_exclusion(method):
    lock, value = allcores.Lock(), allcores.Value("q", 0)
    with multiprocessing.get_context(method).Pool(2) as pool:
        done = sum(pool.map(count_under_lock, [(lock, value, 2000)] * 4, chunksize=1))
    assert value.value == done == 8000


def bump(args):
    counter, n = args
    last = 0
    for _ in range(n):
        last = counter.increment()
    return last


def test_counter_is_atomic_with_executor():
    c = allcores.Counter(initial=100)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        lasts = list(ex.map(bump, [(c, 1000)] * 4))
    assert c.value == 4100
    assert max(lasts) == 4100
    assert c.increment(-100) == 4000


def test_allcores_pool_carries_primitives():
    c, q = allcores.Counter(), allcores.Queue()
    with allcores.Pool(2) as pool:
        pool.map(lambda i: (c.increment(), q.put(i)), range(50))
    assert c.value == 50
    got = []
    while len(got) < 50:
        got += q.get_many(100, timeout=TIMEOUT)
    assert sorted(got) == list(range(50))
    q.close()


def rlock_probe(rlock):
    got = rlock.acquire(timeout=0.05)  # the parent holds it: must fail, not deadlock
    if got:
        rlock.release()
    return got


def test_rlock_held_by_parent_blocks_workers(mp_pool):
    rlock = allcores.RLock()
    with rlock:
        assert mp_pool.apply(rlock_probe, (rlock,)) is False
    assert mp_pool.apply(rlock_probe, (rlock,)) is True


def wait_for(event):
    return event.wait(TIMEOUT)


def test_event_wakes_waiting_tasks(mp_pool):
    ev = allcores.Event()
    assert not ev.is_set()
    pending = [mp_pool.apply_async(wait_for, (ev,)) for _ in range(2)]
    ev.set()
    assert [p.get(TIMEOUT) for p in pending] == [True, True]
    ev.clear()
    assert ev.wait(0.01) is False


def meet(barrier):
    return barrier.wait(TIMEOUT)


def test_barrier_releases_all_parties(mp_pool):
    b = allcores.Barrier(2)
    assert b.parties == 2
    for _ in range(2):  # reusable: two generations
        assert sorted(mp_pool.map(meet, [b, b], chunksize=1)) == [0, 1]


def test_barrier_timeout_breaks_it():
    b = allcores.Barrier(2)
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(timeout=0.01)  # nobody else comes
    assert b.broken
    with pytest.raises(threading.BrokenBarrierError):
        b.wait()
    b.reset()
    assert not b.broken


def test_barrier_abort_wakes_a_waiter_in_a_thread():
    b = allcores.Barrier(3)
    errors = []

    def waiter():
        try:
            b.wait(TIMEOUT)
        except threading.BrokenBarrierError as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    # wait until the waiter is inside wait() (n_waiting is shared state, not a sleep)
    while b.n_waiting == 0:
        threading.Event().wait(0.001)
    b.abort()
    t.join(TIMEOUT)
    assert len(errors) == 1


def sem_probe(args):
    sem, active, peak, barrier = args
    with sem:
        now = active.increment()
        with peak.get_lock():
            peak.value = max(peak.value, now)
        barrier.wait(TIMEOUT)  # two holders must be inside together
        active.increment(-1)
    return now


def test_semaphore_bounds_and_admits_concurrency():
    sem, active, peak = allcores.Semaphore(2), allcores.Counter(), allcores.Value("i", 0)
    barrier = allcores.Barrier(2)
    assert sem.get_value() == 2
    with multiprocessing.get_context("fork").Pool(3) as pool:
        pool.map(sem_probe, [(sem, active, peak, barrier)] * 6, chunksize=1)
    assert peak.value == 2
    assert sem.get_value() == 2


def limited(args):
    name, active, peak, barrier = args
    with allcores.limit(name, 2):
        now = active.increment()
        with peak.get_lock():
            peak.value = max(peak.value, now)
        barrier.wait(TIMEOUT)
        active.increment(-1)
    return now


@pytest.fixture
def limit_name():
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(_limit_dir(name), ignore_errors=True)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_limit_bounds_concurrency_across_processes(method, limit_name):
    active, peak, barrier = allcores.Counter(), allcores.Value("i", 0), allcores.Barrier(2)
    with multiprocessing.get_context(method).Pool(3) as pool:
        pool.map(limited, [(limit_name, active, peak, barrier)] * 8, chunksize=1)
    assert peak.value == 2  # never more than 2 inside, and 2 did get in together
    assert active.value == 0


def hold_limit_forever(args):
    name, inside, never = args
    with allcores.limit(name, 1):
        inside.set()
        never.wait()  # killed here by the pool's task timeout


def take_limit(name):
    with allcores.limit(name, 1):
        return True


def test_limit_slot_comes_back_when_holder_is_killed(limit_name):
    inside, never = allcores.Event(), allcores.Event()
    with allcores.Pool(2, timeout=2) as pool:  # every task: killed after 2 s
        doomed = pool.apply_async(hold_limit_forever, ((limit_name, inside, never),))
        assert inside.wait(TIMEOUT)
        with pytest.raises(allcores.TaskTimeoutError):
            doomed.get(TIMEOUT)
        # a semaphore would have lost its count with the killed worker; a flock does not
        assert pool.apply(take_limit, (limit_name,)) is True


def test_limit_in_threads_of_one_process(limit_name):
    active, peak = allcores.Counter(), allcores.Value("i", 0)
    barrier = allcores.Barrier(2)
    threads = [threading.Thread(target=limited, args=((limit_name, active, peak, barrier),))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert peak.value == 2


def test_limit_validates_and_pickles():
    with pytest.raises(ValueError, match="n must be"):
        allcores.limit("x", 0)
    with pytest.raises(ValueError, match="name"):
        allcores.limit("", 1)
    lim = pickle.loads(pickle.dumps(allcores.limit("some name/with slashes", 3)))
    assert (lim.name, lim.n) == ("some name/with slashes", 3)
    with pytest.raises(RuntimeError, match="released more times"):
        lim.release()


def test_value_types_and_lock():
    v = allcores.Value("i", 7)
    assert v.typecode == "i" and v.value == 7
    with v.get_lock():
        v.value += 1  # get_lock is re-entrant, so .value inside it does not deadlock
    assert v.value == 8
    assert allcores.Value("c", b"x").value == b"x"
    with pytest.raises(ValueError, match="typecode"):
        allcores.Value("int", 0)


def test_unpickling_twice_in_one_process_gives_the_same_object():
    r = allcores.RLock()
    assert pickle.loads(pickle.dumps(r)) is r
    with r:  # the same object, so the holding thread may enter again
        assert pickle.loads(pickle.dumps(r)).acquire(timeout=0.01)
        r.release()


def test_using_an_object_after_its_owner_dropped_it_says_what_to_do():
    data = pickle.dumps(allcores.Counter())  # the Counter is collected right away
    gc.collect()
    with pytest.raises(allcores.sync.NameGoneError, match="Keep the object alive"):
        pickle.loads(data)


def test_semaphore_release_n_and_nonblocking():
    s = allcores.Semaphore(0)
    assert s.acquire(block=False) is False
    s.release(3)
    assert s.get_value() == 3
    assert all(s.acquire(timeout=0.01) for _ in range(3))
    with pytest.raises(ValueError):
        allcores.Semaphore(-1)


def pipe_echo(conn):
    while True:
        msg = conn.recv()
        if msg is None:
            return "bye"
        conn.send(("echo", msg))


@pytest.mark.parametrize("method", METHODS)
def test_pipe_round_trips_with_a_task(method):
    here, there = allcores.Pipe()
    with multiprocessing.get_context(method).Pool(1) as pool:
        res = pool.apply_async(pipe_echo, (there,))
        for i in range(50):
            here.send(i)
            assert here.poll(TIMEOUT)
            assert here.recv() == ("echo", i)
        here.send(None)
        assert res.get(TIMEOUT) == "bye"
    assert here.poll(0) is False


def test_one_way_pipe_ends():
    r, w = allcores.Pipe(duplex=False)
    assert r.readable and not r.writable and w.writable and not w.readable
    w.send_bytes(b"abc")
    assert r.recv_bytes() == b"abc"
    with pytest.raises(OSError, match="read-only"):
        r.send(1)
    r.close()
    with pytest.raises(OSError, match="closed"):
        r.recv()


def test_import_allcores_sync_is_light():
    import subprocess
    import sys

    code = ("import sys, allcores; allcores.Queue; "
            "print(sorted(m for m in ('numpy', 'pandas', 'PIL', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_queue_full_empty_via_stdlib_exceptions():
    q = allcores.Queue(maxsize=1)
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.01)
    assert q.get(timeout=TIMEOUT) == 1
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.close()
