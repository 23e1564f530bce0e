"""Argument segments are recycled only when nothing in the worker still views them."""

from __future__ import annotations

import os

import numpy as np
import pytest

import allcores
from _tasks import keep_and_sum, sums_of_kept
from allcores._engine import shm

pytestmark = pytest.mark.timeout(60)
BIG = 1 << 17  # float64 items: 1 MiB, above the shared-memory threshold


def test_segment_pool_best_fit_and_bound(tmp_path):
    pool = shm.SegmentPool(max_bytes=5 << 20)
    names = [shm.pack(np.zeros(n))[1][0] for n in (BIG, 2 * BIG, 4 * BIG)]
    try:
        pool.give(names[:2])
        assert len(pool) == 2
        assert pool.take(BIG * 8) == names[0]  # the smallest that fits
        assert pool.take(BIG * 6) is None  # 2 MiB is more than twice 0.75 MiB: not handed out
        pool.give([names[2]])  # 2 + 4 MiB > 5 MiB: the oldest goes
        assert len(pool) == 1
        assert not os.path.exists(shm.segment_path(names[1]))
    finally:
        pool.clear()
        shm.discard(names)


def test_release_kept_gives_back_only_unviewed_segments():
    data, names = shm.pack([np.ones(BIG), np.full(BIG, 2.0)], reuse=shm.SegmentPool(1 << 30))
    kept: list = []
    first, second = shm.unpack(data, keep=kept)
    assert len(kept) == 2 and all(os.path.exists(shm.segment_path(n)) for n in names)
    del first
    free = shm.release_kept(kept)
    assert free == [names[0]]  # the second is still viewed: unlinked, its memory lives on
    assert not os.path.exists(shm.segment_path(names[1]))
    assert second.sum() == 2.0 * BIG
    shm.discard(free)


def test_a_kept_argument_is_never_overwritten_by_later_calls():
    with allcores.Pool(1) as pool:
        arrays = [np.full(BIG, float(i)) for i in range(12)]
        first = pool.map(keep_and_sum, arrays, chunksize=1)
        pool.map(keep_and_sum, [np.full(BIG, 99.0)] * 6, chunksize=1)  # would reuse segments
        kept = pool.apply(sums_of_kept, (None,))
    assert first == [float(i) * BIG for i in range(12)]
    assert kept[:12] == first

