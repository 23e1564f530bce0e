"""allcores.Queue: ordering, no loss, no duplicates, blocking, big items, errors; real processes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import allcores
from allcores.sync import _queue, _resources

TIMEOUT = 60
FORK = multiprocessing.get_context("fork")


# -- many producers, many consumers ---------------------------------------------------------


def produce(q, pid, n, bulk):
    if bulk:
        q.put_many([(pid, i) for i in range(n)])
    else:
        for i in range(n):
            q.put((pid, i))
    # no flush here: leaving the process must flush what is buffered


def consume(q, out, bulk):
    got = []
    while True:
        batch = q.get_many(37, timeout=TIMEOUT) if bulk else [q.get(timeout=TIMEOUT)]
        ends = batch.count(None)
        got += [item for item in batch if item is not None]
        if ends:  # end markers come after every item; hand back the ones meant for others
            for _ in range(ends - 1):
                q.put(None)
            q.flush()
            out.put(got)
            out.flush()
            return


def run_mpmc(producers, consumers, n, maxsize, bulk):
    q, out = allcores.Queue(maxsize=maxsize), allcores.Queue()
    cons = [FORK.Process(target=consume, args=(q, out, bulk and c % 2 == 0))
            for c in range(consumers)]
    prods = [FORK.Process(target=produce, args=(q, p, n, bulk and p % 2 == 1))
             for p in range(producers)]
    for p in cons + prods:
        p.start()
    for p in prods:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    for _ in range(consumers):
        q.put(None)  # one end marker per consumer, after every item
    q.flush()
    seen = [out.get(timeout=TIMEOUT) for _ in range(consumers)]
    for p in cons:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    q.close()
    out.close()
    return seen


def check_mpmc(seen, producers, n):
    everything = [item for got in seen for item in got]
    assert len(everything) == len(set(everything)) == producers * n  # no loss, no duplicates
    assert set(everything) == {(p, i) for p in range(producers) for i in range(n)}
    for got in seen:  # each consumer sees each producer's items in the order they were put
        for p in range(producers):
            seq = [i for pid, i in got if pid == p]
            assert seq == sorted(seq)


@pytest.mark.timeout(240)
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    producers=st.integers(1, 3),
    consumers=st.integers(1, 3),
    n=st.integers(0, 3000),
    maxsize=st.sampled_from([0, 1, 50]),
    bulk=st.booleans(),
)
def test_many_producers_many_consumers(producers, consumers, n, maxsize, bulk):
    seen = run_mpmc(producers, consumers, n, maxsize, bulk)
    check_mpmc(seen, producers, n)


def test_one_producer_one_consumer_keeps_order():
    seen = run_mpmc(1, 1, 20_000, 0, False)
    assert seen == [[(0, i) for i in range(20_000)]]


# -- in one process -------------------------------------------------------------------------


def test_put_get_fifo_and_bulk():
    q = allcores.Queue()
    assert q.empty() and q.qsize() == 0 and not q.full()
    q.put("a")
    q.put_many(["b", "c", "d"])
    assert q.qsize() == 4
    assert q.get() == "a"
    assert q.get_many(2) == ["b", "c"]
    assert q.get_many(10) == ["d"]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.01)
    with pytest.raises(ValueError, match="max_items"):
        q.get_many(0)
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(1)
    with pytest.raises(ValueError, match="closed"):
        q.get()


def test_maxsize_blocks_and_reports_partial_put_many():
    q = allcores.Queue(maxsize=3)
    assert q.maxsize == 3
    q.put(1)
    with pytest.raises(queue.Full) as info:
        q.put_many([2, 3, 4, 5], timeout=0.01)
    assert info.value.put_count == 2
    assert q.full() and q.qsize() == 3
    with pytest.raises(queue.Full):
        q.put_nowait(6)
    assert q.get_many(10) == [1, 2, 3]
    assert not q.full()
    q.close()


def slow_reader(q, n, out):
    out.put([q.get(timeout=TIMEOUT) for _ in range(n)])
    out.flush()


def test_maxsize_producer_waits_for_a_consumer():
    q, out = allcores.Queue(maxsize=2), allcores.Queue()
    p = FORK.Process(target=slow_reader, args=(q, 100, out))
    p.start()
    for i in range(100):  # blocks whenever 2 are waiting, resumes as the reader takes them
        q.put(i, timeout=TIMEOUT)
    assert out.get(timeout=TIMEOUT) == list(range(100))
    p.join(TIMEOUT)
    q.close()
    out.close()


def test_unbounded_put_never_blocks_when_the_ring_is_full():
    q = allcores.Queue()
    blob = b"x" * 50_000
    n = 3 * _queue.RING_BYTES // len(blob)  # three rings' worth, with nobody reading
    for i in range(n):
        q.put((i, blob))  # buffered in this process when the ring is full
    assert q.qsize() == n
    assert [q.get(timeout=TIMEOUT)[0] for _ in range(n)] == list(range(n))
    q.close()


def test_big_items_spill_and_are_removed():
    q = allcores.Queue()
    big = os.urandom(_queue.RING_BYTES)  # larger than the ring itself
    q.put(big)
    q.put("after")
    q.flush()
    spills = [f for f in os.listdir("/dev/shm") if q._ring_name[1:] + "-x" in f]
    assert len(spills) == 1
    assert q.get(timeout=TIMEOUT) == big
    assert q.get(timeout=TIMEOUT) == "after"
    assert not [f for f in os.listdir("/dev/shm") if q._ring_name[1:] + "-x" in f]
    q.put(big)  # an unread spill is removed with the queue
    q.close()


def test_ring_wraps_many_times_with_mixed_sizes():
    q = allcores.Queue()
    sizes = [1, 10_000, 7, 300_000, 123, 60_000] * 15
    sent = [(i, b"y" * s) for i, s in enumerate(sizes)]

    def reader(box):
        box.extend(q.get(timeout=TIMEOUT) for _ in sent)

    box: list = []
    t = threading.Thread(target=reader, args=(box,))
    t.start()
    for item in sent:
        q.put(item)
    q.flush()
    t.join(TIMEOUT)
    assert box == sent
    q.close()


def test_unpicklable_item_is_reported_and_the_rest_delivered():
    q = allcores.Queue()
    q.put(1)
    q.put(threading.Lock())  # cannot be pickled
    q.put(3)
    with pytest.raises(pickle.PicklingError, match="cannot put"):
        q.flush()
    assert q.get_many(10, timeout=TIMEOUT) == [1, 3]
    q.close()


def test_threads_in_one_process():
    q = allcores.Queue()
    n, producers = 5000, 4
    got: list = []

    def prod(p):
        for i in range(n):
            q.put((p, i))
        q.flush()

    def cons():
        while True:
            item = q.get(timeout=TIMEOUT)
            if item is None:
                return
            got.append(item)

    ts = [threading.Thread(target=prod, args=(p,)) for p in range(producers)]
    cs = [threading.Thread(target=cons) for _ in range(2)]
    for t in ts + cs:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
    q.put_many([None, None])
    for t in cs:
        t.join(TIMEOUT)
    assert sorted(got) == [(p, i) for p in range(producers) for i in range(n)]
    q.close()


def put_and_return(args):
    q, i = args
    q.put(i)  # buffered; the worker's flusher thread sends it once the task returns
    return i


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_queue_through_a_plain_pool(method):
    q = allcores.Queue()
    with multiprocessing.get_context(method).Pool(2) as pool:
        assert pool.map(put_and_return, [(q, i) for i in range(100)]) == list(range(100))
        got = []
        while len(got) < 100:  # read before the pool is terminated: items may still be in flight
            got += q.get_many(100, timeout=TIMEOUT)
    assert sorted(got) == list(range(100))
    q.close()


def test_closed_owner_queue_cannot_travel_but_holders_keep_it():
    q = allcores.Queue()
    data = pickle.dumps(q)
    q.put("kept")
    q.close()  # removes the names; this process's mapping stays valid
    with pytest.raises(allcores.sync.NameGoneError):
        _resources.open_shm(q._ring_name, q._secret)
    assert pickle.loads(data) is q  # same process: the registry still has it


def test_get_wakes_when_an_item_arrives_from_another_process():
    q = allcores.Queue()
    ready = allcores.Event()

    def later():
        ready.wait(TIMEOUT)
        q.put("hello")
        q.flush()

    p = FORK.Process(target=later)
    p.start()
    ready.set()
    assert q.get(timeout=TIMEOUT) == "hello"
    p.join(TIMEOUT)
    q.close()
