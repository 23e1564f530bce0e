"""The scheduler's decisions, tested as pure functions: no process is started here."""

from __future__ import annotations

import random
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allcores._engine.scheduler import (
    GUIDED_FACTOR,
    MAX_CHUNK_ITEMS,
    MIN_CHUNK_SECONDS,
    TARGET_CHUNK_SECONDS,
    ChunkSizer,
    Reorderer,
    RetryPolicy,
    admit,
    describe_exit,
    may_take_back,
    overdue,
    should_recycle,
)


def test_first_chunk_is_a_probe():
    assert ChunkSizer(workers=4).next_size(remaining=10_000) == 1
    assert ChunkSizer(workers=4).next_size(remaining=None) == 1


def test_fixed_chunksize_is_used_as_given():
    sizer = ChunkSizer(workers=2, fixed=7)
    assert sizer.next_size(remaining=100) == 7
    assert sizer.next_size(remaining=3) == 3


def test_chunk_aims_at_target_duration():
    sizer = ChunkSizer(workers=2)
    sizer.observe(items=10, seconds=0.001)  # 0.1 ms an item
    assert sizer.next_size(remaining=None) == round(TARGET_CHUNK_SECONDS / 1e-4)


def test_guided_cap_shrinks_chunks_toward_the_end():
    sizer = ChunkSizer(workers=2)
    sizer.observe(items=1000, seconds=0.0001)  # very cheap items
    big = sizer.next_size(remaining=200_000)
    assert big == 200_000 // (GUIDED_FACTOR * 2)
    assert sizer.next_size(remaining=None) == MAX_CHUNK_ITEMS


def test_expensive_items_get_one_item_chunks():
    sizer = ChunkSizer(workers=2)
    sizer.observe(items=1, seconds=0.2)
    assert sizer.next_size(remaining=50) == 1


def test_cost_estimate_follows_a_change():
    sizer = ChunkSizer(workers=2)
    sizer.observe(items=100, seconds=0.001)
    cheap = sizer.next_size(remaining=None)
    for _ in range(5):
        sizer.observe(items=1, seconds=0.05)
    assert sizer.next_size(remaining=None) < cheap / 100


def test_bad_chunksize_is_refused():
    with pytest.raises(ValueError, match="chunksize"):
        ChunkSizer(workers=2, fixed=0)


# No deadline: an expensive cost makes 100,000 one-item steps, which a machine shared with other
# work can take past hypothesis's 200 ms default (it failed that way, never on an assertion).
@settings(deadline=None)
@given(
    total=st.integers(1, 100_000),
    workers=st.integers(1, 64),
    cost=st.floats(1e-8, 1.0),
)
def test_sizes_cover_the_input_exactly(total, workers, cost):
    sizer = ChunkSizer(workers=workers)
    done = 0
    steps = 0
    while done < total:
        size = sizer.next_size(remaining=total - done)
        assert 1 <= size <= total - done
        sizer.observe(size, size * cost)
        done += size
        steps += 1
    assert done == total
    assert sizer.next_size(remaining=0) == 0


@given(st.lists(st.integers(1, 5), min_size=1, max_size=40), st.randoms())
def test_reorderer_restores_input_order(lengths, rnd):
    segments = []
    start = 0
    for length in lengths:
        segments.append((start, length, list(range(start, start + length))))
        start += length
    shuffled = segments[:]
    rnd.shuffle(shuffled)
    r = Reorderer(ordered=True)
    out = []
    for seg in shuffled:
        for batch in r.add(*seg):
            out.extend(batch)
    assert out == list(range(start))
    assert r.buffered == 0


def test_unordered_reorderer_passes_through():
    r = Reorderer(ordered=False)
    assert r.add(5, 1, ["x"]) == [["x"]]


def test_retry_policy():
    policy = RetryPolicy(retries=2, retry_on=(ValueError,), backoff=0.1)
    assert policy.delay(1, ValueError(), infrastructure=False) == pytest.approx(0.1)
    assert policy.delay(2, ValueError(), infrastructure=False) == pytest.approx(0.2)
    assert policy.delay(3, ValueError(), infrastructure=False) is None
    assert policy.delay(1, KeyError(), infrastructure=False) is None
    assert policy.delay(1, KeyError(), infrastructure=True) == pytest.approx(0.1)
    assert RetryPolicy().delay(1, ValueError(), infrastructure=True) is None
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)


def test_should_recycle():
    assert should_recycle(10, 10, None, None)
    assert not should_recycle(9, 10, None, None)
    assert should_recycle(1, None, 2_000, 1_000)
    assert not should_recycle(1, None, 500, 1_000)
    assert not should_recycle(1, None, None, 1_000)


@pytest.mark.parametrize(
    ("exitcode", "signal_name", "words"),
    [
        (1, None, "exited with status 1"),
        (-signal.SIGSEGV, "SIGSEGV", "segmentation fault"),
        (-signal.SIGABRT, "SIGABRT", "abort"),
        (-signal.SIGKILL, "SIGKILL", "SIGKILL"),
    ],
)
def test_describe_exit(exitcode, signal_name, words):
    name, cause = describe_exit(exitcode)
    assert name == signal_name
    assert words in cause


def test_sigkill_under_memory_pressure_blames_the_oom_killer():
    _, cause = describe_exit(
        -signal.SIGKILL, last_rss_bytes=8 << 30, available_bytes=100 << 20, total_bytes=16 << 30
    )
    assert "probably the out-of-memory killer" in cause
    assert "8192 MiB" in cause
    _, calm = describe_exit(
        -signal.SIGKILL, last_rss_bytes=20 << 20, available_bytes=15 << 30, total_bytes=16 << 30
    )
    assert "probably" not in calm


def test_sizes_balance_a_heavy_tail():
    """W3b in miniature: with the heavy items last, the last chunks hold one item each."""
    rnd = random.Random(1)
    costs = sorted(rnd.uniform(0.001, 0.005) for _ in range(190)) + [0.2] * 10
    sizer = ChunkSizer(workers=2)
    done = 0
    sizes = []
    while done < len(costs):
        size = sizer.next_size(remaining=len(costs) - done)
        sizer.observe(size, sum(costs[done : done + size]))
        sizes.append((done, size))
        done += size
    assert all(size == 1 for start, size in sizes if start >= len(costs) - 8)


def test_admit_holds_back_only_while_something_runs():
    assert admit(3, 100, None)
    assert admit(3, None, 1000)
    assert not admit(3, 100, 1000)
    assert admit(0, 100, 1000)  # nothing runs: one chunk may go, or the pool would deadlock
    assert admit(3, 5000, 1000)


# -- dispatch policy (scheduler.has_room, in_tail, prefetch_budget, batching, blame) ----------

from allcores._engine.scheduler import (  # noqa: E402
    BATCH_MAX_PARTS,
    BATCH_TARGET_SECONDS,
    PREFETCH_HORIZON_SECONDS,
    PREFETCH_MAX_CHUNKS,
    Verdict,
    batch_limit,
    batchable,
    blame,
    has_room,
    in_tail,
    may_queue,
    prefetch_budget,
)


def test_an_idle_worker_always_has_room():
    assert has_room(chunks=0, queued_seconds=None)
    assert has_room(chunks=0, queued_seconds=0.0, running_timed=False)


def test_a_worker_that_stops_or_used_its_lifespan_has_no_room():
    assert not has_room(chunks=0, queued_seconds=0.0, accepting=False)
    assert not has_room(chunks=0, queued_seconds=0.0, lifespan_left=0)
    assert has_room(chunks=0, queued_seconds=0.0, lifespan_left=1)


def test_nothing_queues_behind_a_probe_or_a_timed_item():
    assert not has_room(chunks=1, queued_seconds=None)
    assert not has_room(chunks=1, queued_seconds=0.0, running_timed=True)


@given(st.floats(min_value=0.0, max_value=10.0), st.integers(1, 40))
def test_queueing_only_within_the_horizon(queued, chunks):
    room = has_room(chunks=chunks, queued_seconds=queued)
    assert room == (queued < PREFETCH_HORIZON_SECONDS and chunks < PREFETCH_MAX_CHUNKS)


@given(st.floats(min_value=0.0, max_value=1.0))
def test_prefetch_budget_fills_the_horizon_and_never_goes_negative(queued):
    budget = prefetch_budget(queued)
    assert 0.0 <= budget <= PREFETCH_HORIZON_SECONDS
    assert queued >= PREFETCH_HORIZON_SECONDS or queued + budget == pytest.approx(
        PREFETCH_HORIZON_SECONDS)


def test_a_budget_caps_a_queued_chunk_but_never_below_the_minimum():
    sizer = ChunkSizer(workers=2)
    sizer.observe(items=1000, seconds=0.001)  # 1 us an item
    full = sizer.next_size(remaining=None)
    capped = sizer.next_size(remaining=None, budget=0.001)
    assert capped < full
    assert capped == 2000  # MIN_CHUNK_SECONDS (2 ms) of work, not the 1 ms budget
    assert sizer.next_size(remaining=None, budget=0.0) == 2000


def test_tail_is_a_few_chunks_per_worker_of_a_known_length():
    assert in_tail(remaining=3, chunk_size=1, workers=2)
    assert not in_tail(remaining=100, chunk_size=1, workers=2)
    assert not in_tail(remaining=None, chunk_size=1, workers=2)


def test_a_heavy_tail_runs_in_small_chunks_sent_only_to_idle_workers():
    """Once one item took longer than the chunk target, the smoothed cost says little about the
    next item: in the map's tail (the work left per worker under HEAVY_TAIL_PEAKS of the
    costliest items) a chunk carries at most MIN_CHUNK_SECONDS of smoothed cost, and at its end
    (under HEAVY_END_PEAKS) nothing is queued behind a busy worker, so no late chunk holds two
    heavy items or waits behind one."""
    sizer = ChunkSizer(workers=2)
    for _ in range(50):
        sizer.observe(items=1, seconds=0.0002)
    before = sizer.next_size(remaining=100)
    assert before > 1 and not sizer.in_heavy_tail(100)
    sizer.observe(items=1, seconds=0.2)  # one heavy item
    for _ in range(10):  # ...then small ones again: the smoothed cost forgets it
        sizer.observe(items=1, seconds=0.0002)
    assert sizer.in_heavy_tail(100)
    assert sizer.in_tail(100)
    assert sizer.next_size(remaining=100) * sizer.cost <= MIN_CHUNK_SECONDS
    assert sizer.next_size(remaining=100) < before
    # Far from the end the chunk target still rules (many heavy items' worth of work is left).
    assert not sizer.in_heavy_tail(1_000_000)
    assert sizer.next_size(remaining=1_000_000) * sizer.cost >= TARGET_CHUNK_SECONDS / 2
    assert not sizer.in_heavy_tail(None)  # unknown length: no tail


@settings(max_examples=100, deadline=None)
@given(costs=st.lists(st.floats(min_value=1e-7, max_value=TARGET_CHUNK_SECONDS), max_size=200))
def test_items_never_longer_than_the_target_leave_sizing_as_it_was(costs):
    """W1-like maps (every item shorter than the target) never enter the heavy tail, so tiny
    items keep their large chunks."""
    sizer = ChunkSizer(workers=2)
    for cost in costs:
        sizer.observe(items=1, seconds=cost)
    assert not sizer.in_heavy_tail(10)
    assert not sizer.in_heavy_tail(1_000_000)


def test_only_tiny_known_untimed_single_items_are_batched():
    assert batchable(items=1, cost=1e-5, timed=False, isolated=False)
    assert not batchable(items=1, cost=None, timed=False, isolated=False)  # a probe
    assert not batchable(items=1, cost=1e-5, timed=True, isolated=False)
    assert not batchable(items=1, cost=1e-5, timed=False, isolated=True)  # finding a culprit
    assert not batchable(items=2, cost=1e-5, timed=False, isolated=False)
    assert not batchable(items=1, cost=BATCH_TARGET_SECONDS, timed=False, isolated=False)


@given(st.integers(0, 10**6), st.integers(1, 64), st.none() | st.integers(-5, 1000))
def test_batch_limit_shares_the_waiting_jobs(waiting, workers, lifespan_left):
    limit = batch_limit(waiting=waiting, workers=workers, lifespan_left=lifespan_left)
    assert 1 <= limit <= BATCH_MAX_PARTS
    assert limit <= max(1, -(-waiting // workers))
    if lifespan_left is not None:
        assert limit <= max(1, lifespan_left)


def test_blame_verdicts():
    assert blame(items=1) == Verdict.CRASHED
    assert blame(items=5) == Verdict.ISOLATE
    assert blame(items=1, parts=3) == Verdict.ISOLATE
    assert blame(items=1, timed_out=True) == Verdict.TIMEOUT


def test_a_heavy_tail_queues_one_small_chunk_until_its_end():
    """In a heavy tail one small chunk may wait behind a busy worker's (whatever the expected
    seconds, which mean little there), so the worker does not idle a round trip per item; at
    the tail's end chunks go only to idle workers."""
    from allcores._engine.scheduler import HEAVY_END_PEAKS, HEAVY_QUEUE_CHUNKS, HEAVY_TAIL_PEAKS

    assert HEAVY_END_PEAKS < HEAVY_TAIL_PEAKS
    # The horizon would say no (20 ms queued); the heavy tail's rule says one chunk may wait.
    assert not has_room(chunks=1, queued_seconds=0.020)
    assert has_room(chunks=1, queued_seconds=0.020, heavy_tail=True)
    assert not has_room(chunks=HEAVY_QUEUE_CHUNKS, queued_seconds=0.0, heavy_tail=True)
    assert not has_room(chunks=1, queued_seconds=None, heavy_tail=True)  # a probe runs alone
    assert not has_room(chunks=1, queued_seconds=0.0, running_timed=True, heavy_tail=True)
    sizer = ChunkSizer(workers=2)
    for _ in range(20):
        sizer.observe(items=1, seconds=0.003)
    sizer.observe(items=1, seconds=0.2)
    # 150 items at the mean (~12 ms): in the tail (< 8 peaks per worker), not at its end (4).
    assert sizer.in_heavy_tail(150) and not sizer.in_heavy_end(150)
    assert not sizer.idle_only(150) and sizer.in_tail(150)  # (a cluster: free slots only)
    assert sizer.in_heavy_end(20) and sizer.idle_only(20)
    assert not sizer.in_heavy_end(None)


def test_a_running_chunk_is_overdue_once_past_its_expected_seconds_and_a_margin():
    assert not overdue(0.0035, expected=0.003)  # within the margin: a round trip's noise
    assert overdue(0.010, expected=0.003)
    assert overdue(0.250, expected=0.004)  # one of a heavy tail's long items
    assert not overdue(10.0, expected=None)  # a probe: nothing was expected


def test_a_waiting_chunk_goes_to_a_worker_on_time_or_to_one_left_idle():
    # Behind an overdue chunk it goes first to a worker that asks: idle, or running on time.
    assert may_take_back(holder_overdue=True, taker_idle=True, taker_overdue=False,
                         input_left=True)
    assert may_take_back(holder_overdue=True, taker_idle=False, taker_overdue=False,
                         input_left=True)
    # A taker running late itself would only move the wait.
    assert not may_take_back(holder_overdue=True, taker_idle=False, taker_overdue=True,
                             input_left=True)
    # Behind a chunk on time only a worker with nothing else to do takes it.
    assert not may_take_back(holder_overdue=False, taker_idle=True, taker_overdue=False,
                             input_left=True)
    assert may_take_back(holder_overdue=False, taker_idle=True, taker_overdue=False,
                         input_left=False)
    assert not may_take_back(holder_overdue=False, taker_idle=False, taker_overdue=False,
                             input_left=False)


def test_a_chunk_that_can_be_taken_back_may_wait_until_a_heavy_tail_ends():
    sizer = ChunkSizer(workers=2)
    for _ in range(20):
        sizer.observe(items=1, seconds=0.003)
    sizer.observe(items=1, seconds=0.2)
    assert sizer.in_heavy_end(20) and sizer.idle_only(20)
    assert not sizer.idle_only(20, take_back=True)  # nothing it waits behind can strand it
    assert sizer.idle_only(3, take_back=True)  # the last chunks by count still go to idle ones


def test_may_queue_keeps_probes_and_timed_items_alone_and_lets_tiny_calls_wait():
    assert not may_queue(learned=False, timed=False, tail=False)  # a probe
    assert not may_queue(learned=True, timed=True, tail=False)  # its clock must be honest
    assert may_queue(learned=True, timed=False, tail=False)
    assert not may_queue(learned=True, timed=False, tail=True)
    # One-item calls are always in a tail by count; tiny ones may still wait (their backlog).
    assert may_queue(learned=True, timed=False, tail=True, tiny_call=True)
    assert not may_queue(learned=True, timed=True, tail=True, tiny_call=True)
