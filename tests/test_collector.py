"""The collector's threshold is raised while a pool holds many pending calls, and put back as
the program had it (collector.py). Real processes for the pool's part."""

from __future__ import annotations

import gc
import os
import time

import pytest

import allcores
from _tasks import add, read_fifo
from allcores._engine import collector

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _restore_gc():
    was_enabled, thresholds = gc.isenabled(), gc.get_threshold()
    gc.enable()
    gc.set_threshold(700, *thresholds[1:])
    yield
    gc.set_threshold(*thresholds)
    (gc.enable if was_enabled else gc.disable)()


def test_raised_while_held_and_put_back_by_the_last_holder():
    collector.hold()
    collector.hold()
    assert gc.get_threshold()[0] == collector.THRESHOLD
    collector.release()
    assert gc.get_threshold()[0] == collector.THRESHOLD  # one pool still holds it
    collector.release()
    assert gc.get_threshold()[0] == 700


def test_a_threshold_the_program_set_meanwhile_is_kept():
    collector.hold()
    gc.set_threshold(1234)
    collector.release()
    assert gc.get_threshold()[0] == 1234


@pytest.mark.parametrize("setup", ["disabled", "zero", "higher"])
def test_a_collector_the_program_configured_is_left_alone(setup):
    if setup == "disabled":
        gc.disable()
    else:
        gc.set_threshold(0 if setup == "zero" else 50_000)
    before = gc.get_threshold()
    collector.hold()
    assert gc.get_threshold() == before
    collector.release()
    assert gc.get_threshold() == before


def test_a_pool_with_many_pending_calls_raises_it_and_puts_it_back(tmp_path):
    gate = str(tmp_path / "gate")
    os.mkfifo(gate)
    with allcores.Pool(1) as pool:  # one worker, held at the gate while the calls wait
        blocker = pool.apply_async(read_fifo, (gate,))
        calls = [pool.apply_async(add, (i, 1)) for i in range(4 * collector.PENDING_CALLS)]
        deadline = time.monotonic() + 30
        while gc.get_threshold()[0] != collector.THRESHOLD and time.monotonic() < deadline:
            time.sleep(0.01)  # the manager takes the calls in its own thread
        assert gc.get_threshold()[0] == collector.THRESHOLD
        with open(gate, "w") as f:  # opens once the worker is reading; closing lets it go
            f.write("go")
        assert blocker.get(timeout=60) == 2
        assert [c.get(timeout=60) for c in calls] == [i + 1 for i in range(len(calls))]
        pool.close()
        pool.join()
    assert gc.get_threshold()[0] == 700
