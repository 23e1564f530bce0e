"""allcores.share / SharedArray: zero copy in tasks, writable slices, lifetime, no leaks."""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import allcores
from allcores import SharedArray, share
from allcores._engine import shm


def segments(pid: int | None = None) -> set[str]:
    prefix = f"{shm.SEGMENT_PREFIX}{shm.identity()}-{os.getpid() if pid is None else pid}-"
    return {n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix)}


@pytest.fixture
def pool(start_method):  # start_method: fork, spawn, forkserver (tests/conftest.py)
    with allcores.Pool(2, context=start_method) as p:
        yield p


def base_object(arr):
    obj = arr
    while True:
        if isinstance(obj, np.ndarray) and obj.base is not None:
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return obj


# ----------------------------------------------------------------- tasks (module level: spawn)


def part_sum(args):
    handle, lo, hi = args
    return float(handle.array[lo:hi].sum())


def fill_row(args):
    out, i = args
    out.array[i] = i  # each task writes its own row only
    out[i, 0] = -i  # __setitem__ goes to the same pages
    return os.getpid()


def inspect_view(handle):
    """How the task sees the share: a map of the segment, not a copy?"""
    arr = handle.array
    with open("/proc/self/maps") as f:
        maps = f.read()
    return (
        isinstance(base_object(arr), mmap.mmap),
        f"/dev/shm/{handle.name}" in maps,
        arr.flags.writeable,
        np.asarray(handle).shape,
        len(handle),
        str(handle.dtype),
    )


def try_write(handle):
    try:
        handle.array[0] = 1
    except ValueError as exc:
        return str(exc)
    return "wrote"


def map_id(handle):
    return id(base_object(handle.array)), os.getpid()


def forget_and_count(_):
    import allcores.shared as shared

    shared.forget_closed_maps()
    return len(shared._maps)


def give_back(handle):
    return handle


def write_then_die(out):
    out.array[:] = 7.0
    os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------- in one process


def test_share_copies_once_and_maps_read_only():
    src = np.arange(12.0).reshape(3, 4)
    with share(src) as h:
        assert (h.shape, h.dtype, h.nbytes, len(h)) == ((3, 4), np.dtype("f8"), 96, 3)
        np.testing.assert_array_equal(h.array, src)
        np.testing.assert_array_equal(np.asarray(h), src)
        assert h[2, 3] == 11.0
        assert not h.array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            h.array[0, 0] = 1.0
        with pytest.raises(ValueError, match="read-only"):
            h[0, 0] = 1.0
        src[0, 0] = 99.0  # a copy was shared, not the caller's buffer
        assert h.array[0, 0] == 0.0
        assert h.name in segments()
        assert "read-only" in repr(h)


def test_handle_pickles_as_a_tiny_reference():
    with share(np.zeros(2**20)) as h:  # 8 MiB
        blob = pickle.dumps(h)
        assert len(blob) < 400
        clone = pickle.loads(blob)
        assert clone.array.base is not None and clone.shape == (2**20,)


def test_close_unlinks_but_existing_views_stay_valid():
    h = share(np.arange(1000.0))
    view = h.array
    name = h.name
    h.close()
    h.close()  # twice is fine
    assert name not in segments()
    import allcores.shared as shared

    assert not [key for key in shared._maps if key[0] == name]  # this process let go too
    assert view.sum() == sum(range(1000))
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(h)
    with pytest.raises(ValueError, match="closed"):
        h.array


def test_garbage_collection_unlinks():
    h = SharedArray.zeros((10, 10))
    name = h.name
    del h
    gc.collect()
    assert name not in segments()


def test_empty_zeros_bytes_and_zero_size():
    with SharedArray.empty(5, "int32") as a:
        assert a.writable and a.array.dtype == np.int32 and not a.array.any()
        a[1:3] = 4
        assert a.array.tolist() == [0, 4, 4, 0, 0]
    with share(b"hello" * 100_000) as b:
        assert len(b) == 500_000 and bytes(b)[:10] == b"hellohello"
        assert b.buffer.readonly and b.array.dtype == np.uint8
    with SharedArray.empty((0, 3)) as z:
        assert z.array.shape == (0, 3)


def test_unshareable_objects_say_what_to_do():
    with pytest.raises(TypeError, match="fixed-size dtype"):
        share(np.array([object()]))
    with pytest.raises(TypeError, match="numpy.asarray"):
        share([1, 2, 3])


# ----------------------------------------------------------------- in real worker processes


@pytest.mark.timeout(90)
def test_tasks_see_the_segment_itself_not_a_copy(pool):
    with share(np.arange(300_000, dtype=np.int64)) as h:
        on_map, in_maps, writeable, shape, n, dtype = pool.apply(inspect_view, (h,))
        assert on_map and in_maps and not writeable
        assert (shape, n, dtype) == ((300_000,), 300_000, "int64")
        assert "read-only" in pool.apply(try_write, (h,))
        sums = pool.map(part_sum, [(h, i, i + 30_000) for i in range(0, 300_000, 30_000)])
        assert sum(sums) == float(np.arange(300_000, dtype=np.int64).sum())


@pytest.mark.timeout(90)
def test_workers_fill_disjoint_rows_of_one_output(pool):
    with SharedArray.zeros((16, 1000)) as out:
        pids = pool.map(fill_row, [(out, i) for i in range(16)])
        expected = np.repeat(np.arange(16.0)[:, None], 1000, axis=1)
        expected[:, 0] = -np.arange(16.0)
        np.testing.assert_array_equal(out.array, expected)  # writes seen by the parent
    for pid in set(pids):
        assert segments(pid) == set()
    with share(np.zeros((4, 10)), writable=True) as h:  # a writable copy of an existing array
        pool.map(fill_row, [(h, i) for i in range(4)])
        assert h.array[3, 5] == 3.0 and h.array[3, 0] == -3.0


@pytest.mark.timeout(90)
def test_a_worker_killed_while_mapping_leaks_nothing(pool):
    with SharedArray.zeros(100_000) as out:
        with pytest.raises(allcores.WorkerCrashedError):
            pool.apply(write_then_die, (out,))
        assert out.array[-1] == 7.0  # its writes landed in the shared pages
        assert out.name in segments()  # the owner's segment is untouched
    # and the pool goes on
    assert pool.apply(part_sum, ((share(np.ones(10)), 0, 10),)) == 10.0


def test_a_copy_of_the_handle_in_the_owner_does_not_free_it():
    h = share(np.ones(1000))
    clone = pickle.loads(pickle.dumps(h))  # e.g. a handle that a task returned
    clone.close()
    del clone
    gc.collect()
    assert h.name in segments()
    assert h.array.sum() == 1000.0
    h.close()


@pytest.mark.timeout(90)
def test_workers_keep_one_map_per_share_and_drop_it_once_closed():
    with allcores.Pool(1) as pool:
        h = share(np.ones(100_000))
        (a, pid1), (b, pid2) = pool.apply(map_id, (h,)), pool.apply(map_id, (h,))
        assert pid1 == pid2 and a == b  # the second task reused the first one's map
        returned = pool.apply(give_back, (h,))  # comes back as a non-owning copy
        del returned
        gc.collect()
        assert pool.apply(forget_and_count, (0,)) == 1  # still open: kept
        h.close()
        assert pool.apply(forget_and_count, (0,)) == 0  # closed: let go
        with pytest.raises(FileNotFoundError, match="closed it or exited"):
            pool.apply(map_id, (SharedArray(h.name, h.dtype, h.shape, False, os.getpid(), h._secret),))


def test_forked_child_dropping_an_inherited_handle_does_not_unlink():
    h = share(np.ones(10))
    pid = os.fork()
    if pid == 0:  # the child: drop and close its copy, exit without cleanup
        try:
            h.close()
            del h
            gc.collect()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert h.name in segments()
    assert h.array.sum() == 10.0
    h.close()


# ----------------------------------------------------------------- owner exits


def _run_owner(code: str) -> tuple[int, int]:
    """Run an owner script in a fresh interpreter; return (pid, returncode)."""
    script = textwrap.dedent(
        """
        import os, sys, numpy as np, allcores
        print(os.getpid(), flush=True)
        keep = [allcores.share(np.ones(1000)), allcores.SharedArray.zeros(1000)]
        """
    ) + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    return int(proc.stdout.split()[0]), proc.returncode


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "ending, code",
    [
        ("normal exit", ""),
        ("exception", "raise RuntimeError('boom')"),
        ("Ctrl-C", "os.kill(os.getpid(), 2); import time; time.sleep(30)"),
    ],
)
def test_owner_exit_leaves_nothing(ending, code):
    pid, rc = _run_owner(code)
    assert rc != 0 if ending != "normal exit" else rc == 0
    assert segments(pid) == set()


@pytest.mark.timeout(90)
def test_owner_sigkilled_is_swept_by_the_next_run():
    pid, rc = _run_owner("os.kill(os.getpid(), 9)")
    assert rc == -signal.SIGKILL
    left = segments(pid)
    assert len(left) == 2  # nothing could run in the owner
    assert left <= set(shm.sweep_stale())  # what a new pool does when it starts
    assert segments(pid) == set()


def test_a_share_too_big_for_dev_shm_says_how_to_make_room():
    with pytest.raises(OSError, match="shm-size"):
        SharedArray.empty(2**47, "u1")  # 128 TiB: more than any /dev/shm
