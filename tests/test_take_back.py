"""Taking a chunk back from a busy worker's pipe: exactly once, under every start method.

The manager may give a chunk that waits unstarted behind a long item to another worker
(scheduler.may_take_back); the claim pipe decides who runs it (worker_main.Claims). The
policy itself is tested in test_scheduler.py and, over many seeds, in test_simulation.py.
"""

from __future__ import annotations

import os
import random

import pytest

import allcores
from _tasks import sleep_once, sleep_or_exit
from allcores._engine.worker_main import Claims

pytestmark = pytest.mark.timeout(120)


def _ids(*ids: int) -> bytes:
    return b"".join(i.to_bytes(8, "little") for i in ids)


class _End:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def test_each_claim_id_reaches_one_reader_and_a_skipped_chunk_keeps_the_next_id():
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        worker = Claims(_End(r))
        os.write(w, _ids(5, 6, 7))  # three chunks that may be taken back, in pipe order
        assert int.from_bytes(os.read(r, 8), "little") == 5  # the manager takes chunk 5 back
        assert not worker.take(5)  # ...so the worker skips it (it read 6: a later chunk's)
        assert worker.take(6)  # the id it kept
        assert worker.take(7)
        os.write(w, _ids(8))
        assert int.from_bytes(os.read(r, 8), "little") == 8
        assert not worker.take(8)  # no id left at all: taken back too
        os.write(w, _ids(9))
        assert worker.take(9)
        with pytest.raises(BlockingIOError):  # the worker took 9: nothing for the manager
            os.read(r, 8)
    finally:
        os.close(r)
        os.close(w)


def _skewed_seconds(seed: int, n: int = 200) -> list[float]:
    """W3's shape in sleeps: 90% 1-5 ms, 6% 10-50 ms, 4% 200 ms, shuffled by ``seed``."""
    rng = random.Random(seed)
    seconds = [rng.uniform(0.001, 0.005) for _ in range(n * 90 // 100)]
    seconds += [rng.uniform(0.010, 0.050) for _ in range(n * 6 // 100)]
    seconds += [0.2] * (n - len(seconds))
    rng.shuffle(seconds)
    return seconds


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_chunks_waiting_behind_long_items_are_taken_back_and_run_exactly_once(tmp_path, context):
    with allcores.Pool(2, context=context) as pool:
        manager = pool._engine._manager  # type: ignore[attr-defined]
        for seed in range(1, 4):
            folder = tmp_path / f"seed-{seed}"
            folder.mkdir()
            seconds = _skewed_seconds(seed)
            items = [(str(folder), i, s) for i, s in enumerate(seconds)]
            # sleep_once raises if an item runs a second time: the map would fail
            assert pool.map(sleep_once, items) == list(range(len(items)))
            assert len(os.listdir(folder)) == len(items)
            if manager.taken_back:
                break
        assert manager.taken_back > 0  # the path above was really taken


def test_a_worker_that_dies_with_chunks_waiting_fails_only_its_item():
    """Its claim pipe goes with it: what waited unstarted in its pipe runs elsewhere, once."""
    seconds = _skewed_seconds(7)
    crash_at = len(seconds) - 15  # in the heavy tail, where waiting chunks can be taken back
    items = [(i, s, i == crash_at) for i, s in enumerate(seconds)]
    with allcores.Pool(2) as pool:
        out = pool.map(sleep_or_exit, items, on_error="collect")
        assert [f.index for f in out.failures] == [crash_at]
        assert isinstance(out.failures[0].error, allcores.WorkerCrashedError)
        assert [v for i, v in enumerate(out) if i != crash_at] == [
            i for i in range(len(items)) if i != crash_at]
        assert pool.map(sleep_or_exit, [(1, 0.0, False)]) == [1]  # the pool goes on
