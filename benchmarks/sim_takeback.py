"""Taking a queued chunk back (docs/design.md, heavy tails, "the next step"), in the simulation.

    python benchmarks/sim_takeback.py                 # W3, 200 seeds, 4 latencies (~1 min)
    python benchmarks/sim_takeback.py --seeds 500 --latencies 0.1,0.2

No process is started: this plays W3's durations (``workloads.skewed_durations_ms``) on 2
simulated workers, as ``tests/_simulation.py`` does, with the real pure scheduling code
(``ChunkSizer``, ``has_room``, ``may_queue``, ``prefetch_budget``). It compares today's rule
(that simulation as it is) with a design the engine does not have yet: a chunk queued behind a
busy worker can be taken back as long as that worker has not started it, so one small chunk
may wait behind a busy worker until the very end of a heavy tail.

Taking back, as played here (the manager knows only what its clock and the answers say):

* A waiting chunk whose worker's running chunk is overdue (running longer than its expected
  seconds plus one latency) goes to the next worker that asks for work, before any new input,
  if that worker is idle or its own running chunk is on time.
* A worker that is idle after a dispatch round takes the oldest waiting chunk that has not
  started anywhere.

It prints, per latency (one way), the mean and worst speedup over the seeds, and the worst
ratio to one item at a time to the first idle worker with no overhead (the ideal for a
scheduler that has not seen the items; ``tests/test_simulation.py`` asks >= 0.97 of it).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import statistics
import sys
from collections import deque
from collections.abc import Sequence
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from _simulation import simulate as simulate_today  # noqa: E402
from allcores._engine import scheduler  # noqa: E402
from allcores._engine.scheduler import ChunkSizer, has_room, may_queue, prefetch_budget  # noqa: E402
from workloads import skewed_durations_ms  # noqa: E402

WORKERS = 2
#: How late a running chunk must be (in multiples of its expected seconds) before the chunk
#: waiting behind it may go to another worker.
OVERDUE = 1.0


class _Sent:
    """One chunk in a simulated worker's pipe."""

    __slots__ = ("start", "size", "expected", "begin", "end", "token")

    def __init__(self, start: int, size: int, expected: float | None, begin: float, end: float,
                 token: int) -> None:
        self.start, self.size, self.expected = start, size, expected
        self.begin, self.end, self.token = begin, end, token


def simulate_takeback(costs: Sequence[float], workers: int = WORKERS, *,
                      latency: float = 100e-6) -> float:
    """The speedup of one map of ``costs`` with queued chunks that can be taken back."""
    sizer = ChunkSizer(workers)
    total = len(costs)
    next_index = 0
    pipes: list[deque[_Sent]] = [deque() for _ in range(workers)]
    events: list[tuple[float, int, int, int]] = []
    order = itertools.count()
    tokens = itertools.count()
    taken_back: set[int] = set()
    now = last = 0.0

    def free_at(pipe: deque[_Sent]) -> float:
        return pipe[-1].end if pipe else 0.0

    def queued_seconds(pipe: deque[_Sent]) -> float | None:
        expected = 0.0
        for sent in pipe:
            if sent.expected is None:
                return None
            expected += sent.expected
        return expected

    def send(slot: int, start: int, size: int, expected: float | None) -> None:
        pipe = pipes[slot]
        begin = max(now + latency, free_at(pipe))
        end = begin + sum(costs[start:start + size])
        token = next(tokens)
        pipe.append(_Sent(start, size, expected, begin, end, token))
        heapq.heappush(events, (end + latency, next(order), slot, token))

    def overdue(pipe: deque[_Sent]) -> bool:
        running = pipe[0]
        expected = running.expected if running.expected is not None else 0.0
        return running.begin <= now and now - running.begin > OVERDUE * expected + latency

    def unstarted(pipe: deque[_Sent]) -> int | None:
        """The position of the oldest chunk in ``pipe`` not started by now (what the claim
        pipe's first id names), or None."""
        for position in range(1, len(pipe)):
            if pipe[position].begin > now:
                return position
        return None

    def waiting(slot: int, only_overdue: bool) -> int | None:
        """The worker (not ``slot``) whose unstarted queued chunk is oldest, or None."""
        best = None
        best_start = total
        for other in range(workers):
            pipe = pipes[other]
            position = None if other == slot else unstarted(pipe)
            if position is None or (only_overdue and not overdue(pipe)):
                continue
            if pipe[position].start < best_start:
                best, best_start = other, pipe[position].start
        return best

    def take_back(holder: int, taker: int) -> None:
        pipe = pipes[holder]
        position = unstarted(pipe)
        assert position is not None
        sent = pipe[position]
        del pipe[position]
        taken_back.add(sent.token)
        # What was queued after it in the holder's pipe starts that much sooner.
        later = [pipe.pop() for _ in range(len(pipe) - position)][::-1]
        for moved in later:
            taken_back.add(moved.token)
            begin = max(moved.begin - (sent.end - sent.begin), free_at(pipe))
            work = moved.end - moved.begin
            token = next(tokens)
            pipe.append(_Sent(moved.start, moved.size, moved.expected, begin, begin + work,
                              token))
            heapq.heappush(events, (begin + work + latency, next(order), holder, token))
        send(taker, sent.start, sent.size, sent.expected)

    def dispatch() -> None:
        nonlocal next_index
        more = True
        while more and next_index < total:
            more = False
            for slot in sorted(range(workers), key=lambda s: len(pipes[s])):
                pipe = pipes[slot]
                if next_index >= total:
                    continue
                queued = queued_seconds(pipe)
                busy = bool(pipe)
                remaining = total - next_index
                heavy = sizer.in_heavy_tail(remaining)
                if not has_room(chunks=len(pipe), queued_seconds=queued, heavy_tail=heavy):
                    continue
                if busy and (queued is None or not may_queue(
                        learned=sizer.learned, timed=False, tail=sizer.idle_only(remaining))):
                    continue
                holder = None if busy and overdue(pipe) else waiting(slot, only_overdue=True)
                if holder is not None:
                    take_back(holder, slot)
                    more = True
                    continue
                budget = prefetch_budget(queued) if busy and queued is not None else None
                size = min(sizer.next_size(remaining, budget), remaining)
                expected = None if sizer.cost is None else sizer.cost * size
                send(slot, next_index, size, expected)
                next_index += size
                more = True
        for slot in range(workers):
            if not pipes[slot]:
                holder = waiting(slot, only_overdue=False)
                if holder is not None:
                    take_back(holder, slot)

    dispatch()
    while events:
        now, _, slot, token = heapq.heappop(events)
        if token in taken_back:
            continue
        last = now
        sent = pipes[slot].popleft()
        assert sent.token == token
        sizer.observe(sent.size, sum(costs[sent.start:sent.start + sent.size]))
        dispatch()
    assert next_index == total
    return sum(costs) / last


def one_at_a_time(costs: Sequence[float], workers: int = WORKERS) -> float:
    """One item at a time to the first idle worker, no round trip: the ideal."""
    free = [0.0] * workers
    for cost in costs:
        free[free.index(min(free))] += cost
    return sum(costs) / max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="W3 seeds 1..N")
    parser.add_argument("--latencies", default="0.1,0.2,0.5,1",
                        help="one-way latencies in milliseconds, comma-separated")
    args = parser.parse_args()
    maps = [[ms / 1e3 for ms in skewed_durations_ms(seed)] for seed in range(1, args.seeds + 1)]
    ideal = [one_at_a_time(costs) for costs in maps]
    print(f"W3 over seeds 1-{args.seeds}, {WORKERS} workers; mean / worst speedup, and the worst "
          "ratio to one item at a time with no overhead")
    print("| one-way latency | today's rule | with taking back |")
    print("|---|---|---|")
    for text in args.latencies.split(","):
        latency = float(text) / 1e3
        today = [simulate_today(costs, WORKERS, latency=latency).speedup for costs in maps]
        # Taking back makes waiting safe until the very end of a heavy tail.
        with mock.patch.object(scheduler, "HEAVY_END_PEAKS", 0):
            back = [simulate_takeback(costs, latency=latency) for costs in maps]
        cells = []
        for speedups in (today, back):
            worst_ratio = min(s / i for s, i in zip(speedups, ideal, strict=True))
            cells.append(f"{statistics.mean(speedups):.3f}x / {min(speedups):.3f}x "
                         f"({worst_ratio:.3f})")
        print(f"| {text} ms | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
