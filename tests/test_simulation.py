"""The dispatch policy in a discrete-event simulation (``tests/_simulation.py``): many seeds and
cost shapes, no process started. The real-process figures are in benchmarks/w3s_skew.py."""

from __future__ import annotations

import os
import random
import statistics
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _simulation import one_at_a_time, simulate
from allcores._engine.scheduler import PREFETCH_HORIZON_SECONDS, has_room

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from workloads import W3_SEED, skewed_durations_ms  # noqa: E402

pytestmark = pytest.mark.timeout(120)

LATENCY = 100e-6  # one way: a pipe write and a wake-up on an idle machine


def w3(seed: int) -> list[float]:
    return [ms / 1e3 for ms in skewed_durations_ms(seed)]


def graham_bound(result, latency: float = LATENCY) -> float:
    """List scheduling's guarantee, with our overheads: every worker works or waits one round
    trip per message until the last chunk is out, then the longest chunk (plus what may be
    queued within the prefetch horizon) can still run alone."""
    per_worker_round_trips = result.messages / result.workers + 1
    return (
        result.total_work / result.workers
        + result.longest_chunk
        + PREFETCH_HORIZON_SECONDS
        + 2 * latency * per_worker_round_trips
    )


@pytest.mark.parametrize("seed", range(1, 9))
def test_w3_seeds_get_close_to_two_workers(seed):
    result = simulate(w3(seed))
    assert result.speedup >= 1.85, result


def test_w3b_heavy_last():
    result = simulate(sorted(w3(W3_SEED)))
    assert result.speedup >= 1.9, result


def test_w3_over_many_seeds_mean_and_worst():
    """The issue's bar (mean >= 1.9x, no seed under 1.8x) over 200 seeds, not just 8: a late
    chunk holding two 200 ms items, or one item queued behind a 200 ms one, costs 0.1x or more
    on the unluckiest seeds (worst was 1.73x before the heavy-tail rule)."""
    speedups = [simulate(w3(seed)).speedup for seed in range(1, 201)]
    assert statistics.mean(speedups) >= 1.9
    assert min(speedups) >= 1.8


def test_w3_bar_holds_when_each_chunk_costs_the_workers_cpu():
    """The same bar with each chunk costing 0.3 ms of the workers' CPU, about what it costs on
    the 2-core machine (the manager's loop, ~0.15-0.2 ms of CPU per chunk measured with
    ``time.thread_time``, runs on the cores the workers fill; the worker adds its own framing).
    The heavy tail's one-item chunks are what keeps the worst seed up; this keeps their number
    from growing past what they are worth (1.91x mean, 1.81x worst today)."""
    speedups = [simulate(w3(seed), chunk_overhead=0.3e-3).speedup for seed in range(1, 201)]
    assert statistics.mean(speedups) >= 1.9
    assert min(speedups) >= 1.8


def test_w3_within_a_few_percent_of_one_item_at_a_time_on_every_seed():
    # One item at a time gets 1.85x on its worst seed here: the 200 ms items drawn last decide.
    for seed in range(1, 201):
        costs = w3(seed)
        assert simulate(costs).speedup >= 0.97 * one_at_a_time(costs), seed


@pytest.mark.parametrize("latency", [0.5e-3, 1e-3])
def test_taking_chunks_back_lifts_w3_where_round_trips_are_slow(latency):
    """Where a round trip is slow (two busy cores), a chunk waiting behind a busy worker saves
    one per item, and taking it back keeps it from being stranded behind a long item; without
    it the end of a heavy tail goes one round trip per item (benchmarks/sim_takeback.py)."""
    seeds = range(1, 101)
    taking = [simulate(w3(seed), latency=latency).speedup for seed in seeds]
    not_taking = [simulate(w3(seed), latency=latency, take_back=False).speedup for seed in seeds]
    assert statistics.mean(taking) >= statistics.mean(not_taking) + 0.03
    assert min(taking) > min(not_taking)


def test_second_call_with_a_learned_cost_is_as_fast():
    speedups = []
    for seed in range(1, 201):
        first = simulate(w3(seed))
        second = simulate(w3(seed), learned_cost=first.cost)
        third = simulate(w3(seed), learned_cost=second.cost)
        speedups += [second.speedup, third.speedup]
    assert statistics.mean(speedups) >= 1.9
    assert min(speedups) >= 1.8
    heavy_last = sorted(w3(W3_SEED))
    first = simulate(heavy_last)
    assert simulate(heavy_last, learned_cost=first.cost).speedup >= 1.9


@pytest.mark.parametrize("workers", [2, 4])
def test_other_heavy_tails_over_many_seeds(workers):
    """Other mixes than W3's: heavy items of 50-500 ms at 1-6% among 0.5-10 ms ones, shuffled.
    The claim is about the scheduler, not about W3's numbers."""
    ratios = []
    for seed in range(100):
        rng = random.Random(seed)
        heavy = rng.choice((0.05, 0.2, 0.5))
        share = rng.uniform(0.01, 0.06)
        low = rng.choice((0.0005, 0.001, 0.002))
        costs = [heavy if rng.random() < share else rng.uniform(low, 5 * low)
                 for _ in range(rng.randint(150, 400))]
        ratios.append(simulate(costs, workers).speedup / one_at_a_time(costs, workers))
    assert statistics.mean(ratios) >= 0.97


def test_nothing_long_waits_behind_a_busy_worker():
    """The pull rule: whatever the costs, a chunk is queued behind a busy worker only while the
    work in its pipe ends within the horizon, so what an unexpectedly long item strands behind
    it is bounded. Here item 0 is a probe (cost unknown) of 200 ms: nothing may wait behind it,
    and the other worker does all the rest meanwhile."""
    costs = [0.2] + [0.001] * 150
    result = simulate(costs)
    assert result.makespan <= 0.2 + 0.005 + 10 * 2 * LATENCY


@pytest.mark.parametrize(
    "shape",
    ["heavy-tailed", "increasing", "decreasing", "bimodal", "tiny", "pareto"],
)
@pytest.mark.parametrize("known_length", [True, False])
def test_cost_shapes_stay_within_the_list_scheduling_bound(shape, known_length):
    for seed in range(20):
        rng = random.Random(seed)
        n = rng.randint(50, 400)
        if shape == "heavy-tailed":
            costs = w3(seed + 1000)[:n]
        elif shape == "increasing":
            costs = sorted(rng.uniform(0.0005, 0.05) for _ in range(n))
        elif shape == "decreasing":
            costs = sorted((rng.uniform(0.0005, 0.05) for _ in range(n)), reverse=True)
        elif shape == "bimodal":
            costs = [rng.choice((0.0002, 0.03)) for _ in range(n)]
        elif shape == "tiny":
            costs = [rng.uniform(1e-6, 5e-6) for _ in range(n * 100)]
        else:
            costs = [min(0.5, 0.001 * rng.paretovariate(1.2)) for _ in range(n)]
        for workers in (2, 4):
            result = simulate(costs, workers, known_length=known_length)
            assert result.makespan >= result.lower_bound
            assert result.makespan <= graham_bound(result), (shape, seed, workers, result)


@settings(max_examples=200, deadline=None)
@given(
    costs=st.lists(st.floats(min_value=1e-6, max_value=0.3), min_size=1, max_size=300),
    workers=st.integers(1, 8),
    latency=st.sampled_from([10e-6, 100e-6, 1e-3]),
    known_length=st.booleans(),
)
def test_any_costs_finish_within_the_bound(costs, workers, latency, known_length):
    result = simulate(costs, workers, latency=latency, known_length=known_length)
    assert result.makespan >= result.lower_bound
    assert result.makespan <= graham_bound(result, latency)


def test_tiny_items_are_not_drowned_in_round_trips():
    """200,000 items of 0.1 us (W1's shape): a handful of chunks, not one per item."""
    result = simulate([1e-7] * 200_000, latency=LATENCY)
    assert result.messages < 100


def test_has_room_is_the_rule_the_simulation_uses():
    # The pull decision in one line: no chunk waits behind 20 ms of work, one may wait behind
    # work that ends within the horizon.
    assert not has_room(chunks=1, queued_seconds=0.020)
    assert has_room(chunks=1, queued_seconds=PREFETCH_HORIZON_SECONDS / 2)
