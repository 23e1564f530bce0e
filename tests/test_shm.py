"""The shared-memory transport (allcores._engine.shm): zero copy, round trips, no leaks."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allcores._engine import shm

METHODS = ["fork", "spawn", "forkserver"]
MiB = 1 << 20


def segments(pid: int | None = None) -> set[str]:
    """This process's (or ``pid``'s) segments now in /dev/shm."""
    prefix = f"{shm.SEGMENT_PREFIX}{shm.identity()}-{os.getpid() if pid is None else pid}-"
    return {n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix)}


def base_object(arr):
    """What finally owns an array's memory (walks .base through views and memoryviews)."""
    obj = arr
    while True:
        if isinstance(obj, np.ndarray) and obj.base is not None:
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return obj


def mapped_paths() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


# ----------------------------------------------------------------- in one process


def test_small_message_is_a_plain_pickle():
    msg = {"a": [1, 2, 3], "b": np.arange(10)}
    data, names = shm.pack(msg)
    assert names == []
    assert data[:1] == b"\x80"  # plain pickle: no header, any receiver can pickle.loads it
    assert not shm.is_shm_message(data)
    out = shm.unpack(data)
    assert out["a"] == [1, 2, 3]
    np.testing.assert_array_equal(out["b"], np.arange(10))


def test_big_array_goes_through_one_segment_and_is_unlinked_when_mapped():
    arr = np.arange(MiB, dtype=np.float64)  # 8 MiB
    data, names = shm.pack({"x": arr})
    assert len(names) == 1 and names[0].startswith(f"allcores-{shm.identity()}-{os.getpid()}-")
    assert len(data) < 1000  # the array did not go in-band
    assert names[0] in segments()
    assert shm.segments_of(data) == names
    out = shm.unpack(data)["x"]
    assert names[0] not in segments()  # consumed: the name is gone, the memory is mapped
    np.testing.assert_array_equal(out, arr)
    # Zero-copy: the array's memory is the mmap of the segment, which the kernel still shows.
    import mmap

    assert isinstance(base_object(out), mmap.mmap)
    assert f"/dev/shm/{names[0]}" in mapped_paths()
    assert out.flags.writeable
    out[0] = 42.0  # the receiver owns its fresh segment
    assert arr[0] == 0.0


def test_readonly_array_stays_readonly():
    arr = np.ones(MiB)
    arr.flags.writeable = False
    out = shm.unpack(shm.pack(arr)[0])
    assert not out.flags.writeable
    np.testing.assert_array_equal(out, arr)


def test_threshold_keeps_smaller_buffers_in_band():
    small = np.ones(shm.SHM_THRESHOLD // 8 - 1)
    big = np.ones(shm.SHM_THRESHOLD // 8)
    data, names = shm.pack([small, big])
    assert len(names) == 1
    a, b = shm.unpack(data)
    assert a.nbytes < shm.SHM_THRESHOLD <= b.nbytes
    assert not isinstance(base_object(a), __import__("mmap").mmap)


@pytest.mark.parametrize(
    "obj",
    [
        b"x" * (2 * MiB),
        bytearray(b"y" * (2 * MiB)),
        [1, (b"q" * MiB, "text"), {"k": bytearray(MiB)}],
        {"arr": np.zeros((512, 512)), "raw": b"r" * MiB},  # arrays and bytes in one message
        np.arange(4 * MiB, dtype=np.int32)[::2],  # not contiguous
        np.asfortranarray(np.ones((1024, 512))),
        np.zeros(MiB, dtype=[("a", "<i4"), ("b", "<f8")]),
    ],
    ids=["bytes", "bytearray", "nested", "mixed", "strided", "fortran", "structured"],
)
def test_bytes_likes_and_odd_arrays_round_trip_through_shm(obj):
    data, names = shm.pack(obj)
    assert names, "a big buffer stayed in-band"
    out = shm.unpack(data)
    assert type(out) is type(obj)
    _same(out, obj)


def test_memoryview_travels_zero_copy_with_its_shape():
    src = np.arange(256 * 1024, dtype=np.float64).reshape(512, 512)
    mv = memoryview(src)
    data, names = shm.pack(mv)  # plain pickle cannot send a memoryview at all
    assert len(names) == 1
    out = shm.unpack(data)
    assert isinstance(out, memoryview)
    assert (out.format, out.shape, out.readonly) == ("d", (512, 512), False)
    assert out.tobytes() == mv.tobytes()
    assert isinstance(base_object(out), __import__("mmap").mmap)
    small = shm.unpack(shm.pack(memoryview(b"abc"))[0])
    assert small.tobytes() == b"abc" and small.readonly


def test_failed_pack_leaves_no_segment():
    import threading

    with pytest.raises(TypeError):
        shm.pack([np.ones(MiB), b"z" * MiB, threading.Lock()])
    assert segments() == set()


def test_discard_frees_a_dropped_message_and_unpack_then_says_why():
    data, names = shm.pack(np.ones(MiB))
    assert set(names) <= segments()
    shm.discard(names)
    shm.discard(names)  # twice is fine
    assert not set(names) & segments()
    with pytest.raises(RuntimeError, match="gone before it was read"):
        shm.unpack(data)


def test_sweep_stale_spares_live_processes():
    data, names = shm.pack(np.ones(MiB))
    assert not set(names) & set(shm.sweep_stale())  # this process is alive
    assert set(names) <= segments()
    shm.discard(names)


def test_large_pickle_of_small_objects_takes_no_second_pass():
    # A big list of ints has no bytes in-band: the frame walker must say so (no slow pass).
    data = pickle.dumps(list(range(300_000)), protocol=5)
    assert not shm._has_big_inband_bytes(data, shm.SHM_THRESHOLD)
    assert shm._has_big_inband_bytes(pickle.dumps([b"a" * MiB], protocol=5), shm.SHM_THRESHOLD)
    assert not shm._has_big_inband_bytes(pickle.dumps("s" * MiB, protocol=5), shm.SHM_THRESHOLD)


_dtypes = st.sampled_from(["u1", "i2", "<i4", ">i8", "f4", "f8", "c16", "?", "U3"])
_arrays = st.builds(
    lambda dt, n, seed: np.random.default_rng(seed).integers(0, 100, n).astype(dt),
    _dtypes,
    st.integers(0, 3000),
    st.integers(0, 2**32 - 1),
)
_blobs = st.one_of(
    st.binary(max_size=3000),
    st.binary(max_size=3000).map(bytearray),
    st.binary(max_size=3000).map(memoryview),
)
_leaves = st.one_of(_arrays, _blobs, st.integers(), st.text(max_size=20), st.none())
_objects = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=12,
)


def _same(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=_objects, threshold=st.sampled_from([1, 100, 1000, shm.SHM_THRESHOLD]))
def test_pack_unpack_round_trips_anything(obj, threshold):
    data, names = shm.pack(obj, threshold=threshold)
    assert len(set(names)) == len(names)
    _same(shm.unpack(data), obj)
    assert segments() == set()  # every segment consumed


# ----------------------------------------------------------------- across processes


def _receive_and_answer(data: bytes) -> tuple[bytes, bool, bool, int]:
    """In a worker: unpack an array, check it is a map of the segment, answer with a big one."""
    import mmap as _mmap

    names = shm.segments_of(data)
    arr = shm.unpack(data)
    on_map = isinstance(base_object(arr), _mmap.mmap)
    in_maps = all(f"/dev/shm/{n}" in mapped_paths() for n in names)
    reply, _ = shm.pack(arr * 2)  # a big result travels back the same way
    return reply, on_map, in_maps, os.getpid()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_arrays_cross_processes_zero_copy_both_ways(method):
    arr = np.arange(MiB, dtype=np.float64)
    data, names = shm.pack(arr)
    with mp.get_context(method).Pool(1) as pool:
        reply, on_map, in_maps, wpid = pool.apply(_receive_and_answer, (data,))
    assert on_map and in_maps
    assert not set(names) & segments()  # the worker consumed them
    back = shm.unpack(reply)
    np.testing.assert_array_equal(back, arr * 2)
    assert segments(wpid) == set()


def _pack_then_die(conn) -> None:
    data, names = shm.pack(np.ones(MiB))  # created, never sent
    conn.send(names)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sweep_frees_what_a_killed_process_packed(method):
    ctx = mp.get_context(method)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pack_then_die, args=(child,))
    proc.start()
    names = parent.recv()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert segments(proc.pid) == set(names) and names
    if method == "fork":
        assert sorted(shm.sweep(proc.pid)) == sorted(names)  # what the engine does
    else:
        assert set(names) <= set(shm.sweep_stale())  # what a new pool does at start
    assert segments(proc.pid) == set()
    assert shm.sweep(proc.pid) == []  # nothing left; sweeping again is harmless


def test_small_memoryview_beside_a_big_array():
    data, names = shm.pack([np.ones(MiB), memoryview(b"tiny")])
    assert len(names) == 1
    arr, mv = shm.unpack(data)
    assert arr.sum() == MiB and mv.tobytes() == b"tiny"


def _double_and_describe(a):
    import mmap as _mmap

    return a * 2, isinstance(base_object(a), _mmap.mmap), a.flags.writeable


@pytest.mark.timeout(90)
def test_pool_carries_big_arrays_both_ways(start_method):
    import allcores

    arrays = [np.full(100_000, i, dtype=np.float64) for i in range(6)]  # 800 KB each
    with allcores.Pool(2, context=start_method) as pool:
        out = pool.map(_double_and_describe, arrays, chunksize=1)
    for i, (arr, _zero_copy_in, writable) in enumerate(out):
        assert arr.shape == (100_000,) and arr[0] == 2 * i and arr[-1] == 2 * i
        assert writable
    import mmap

    assert all(zero_copy_in for _, zero_copy_in, _ in out)  # arguments arrived as maps
    assert all(isinstance(base_object(arr), mmap.mmap) for arr, _, _ in out)  # results too


def test_without_room_in_shared_memory_buffers_go_in_band(monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", "/nonexistent-shm-dir")  # as if /dev/shm were full
    data, names = shm.pack([np.ones(MiB), b"b" * MiB, memoryview(bytearray(MiB))])
    assert names == []
    arr, raw, mv = shm.unpack(data)
    assert arr.sum() == MiB and raw == b"b" * MiB and mv.nbytes == MiB


def _double_or_die(args):
    i, arr = args
    if i == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-task, its big argument mapped
    return arr * 2


def _double_or_raise(args):
    i, arr = args
    if i == 0:
        raise ValueError("first item fails; the rest is dropped")
    return arr * 2


@pytest.mark.timeout(90)
def test_no_segment_survives_a_killed_worker_or_dropped_work(start_method, monkeypatch):
    import allcores

    allcores.shutdown()
    monkeypatch.setenv("ALLCORES_START_METHOD", start_method)  # the default pool's method
    items = [(i, np.full(100_000, float(i))) for i in range(8)]  # 800 KB each: via shm
    try:
        workers = set(allcores.map(_pid, range(8), workers=2, chunksize=1))
        out = allcores.map(_double_or_die, items, workers=2, chunksize=1, on_error="collect")
        assert isinstance(out[3], allcores.WorkerCrashedError)
        workers.add(out[3].pid)
        assert [a[0] for i, a in enumerate(out) if i != 3] == [2.0 * i for i in range(8) if i != 3]
        with pytest.raises(ValueError, match="first item fails"):
            allcores.map(_double_or_raise, items, workers=2, chunksize=1)
        # Until the replacement of the killed worker has run something too: a worker still
        # starting (spawn) with a probe of unknown cost in its pipe is sent nothing more (the
        # pull rule, scheduler.has_room), so the first map after it may not reach it.
        while len(workers) < 3:
            workers |= set(allcores.map(_pid, range(8), workers=2, chunksize=1))
    finally:
        allcores.shutdown()  # chunks still queued are freed when their pool stops
    assert len(workers) >= 3
    for pid in workers:
        assert segments(pid) == set()


def _pid(_):
    return os.getpid()
