"""A discrete-event simulation of the manager's dispatch, driven by the real scheduling code.

No process, no clock, no pipe: ``simulate`` plays one map of items with given costs (seconds)
on ``workers`` simulated workers, with a given one-way pipe latency, and returns when each
answer came back. Every decision is made by the same pure code the manager calls
(``allcores._engine.scheduler``): chunk sizes (``ChunkSizer``), whether a worker has room
(``has_room``), the tail rule (``ChunkSizer.idle_only``, ``may_queue``) and how much a
queued chunk may carry (``prefetch_budget``). What is simulated here is only the loop around
them, the same as ``Manager._dispatch`` / ``_next_chunk_for``: every round, idlest worker
first, one message per worker, again while anything was sent; a busy worker is offered no probe and nothing at a
map's tail's end, and in a heavy tail before its end one small chunk (``has_room(heavy_tail=)``).

So a change to the policy shows up in ``tests/test_simulation.py`` in milliseconds, on hundreds
of seeds and cost shapes that a real-process benchmark could never afford.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from allcores._engine.scheduler import ChunkSizer, has_room, may_queue, prefetch_budget

Room = Callable[..., bool]


@dataclass
class _Worker:
    queue: deque = field(default_factory=deque)  # (start, size, expected seconds or None)
    free_at: float = 0.0  # when the worker finishes what it was given so far
    busy: float = 0.0  # seconds of work it ran


@dataclass(frozen=True)
class SimResult:
    """What one simulated map did."""

    makespan: float  # seconds from the first dispatch until the last answer is back
    total_work: float  # the sum of the item costs
    max_cost: float  # the costliest item
    workers: int
    messages: int  # chunks sent (each one a round trip)
    cost: float | None  # the per-item cost the sizer had learned at the end
    longest_chunk: float  # seconds of work in the costliest chunk sent

    @property
    def lower_bound(self) -> float:
        """No schedule can finish sooner: the work shared perfectly, or the longest item."""
        return max(self.total_work / self.workers, self.max_cost)

    @property
    def speedup(self) -> float:
        """Serial time (the total work) over the makespan."""
        return self.total_work / self.makespan


def simulate(
    costs: Sequence[float],
    workers: int = 2,
    *,
    latency: float = 100e-6,
    known_length: bool = True,
    chunksize: int | None = None,
    learned_cost: float | None = None,
    room: Room = has_room,
) -> SimResult:
    """Play one map of ``costs`` on ``workers`` workers; see the module docstring.

    ``latency`` is one way (manager to worker or back); ``known_length=False`` plays an input of
    unknown length (a generator: no guided sizing, no tail); ``learned_cost`` starts the sizer
    with a per-item cost, as a second call of the same function does (the manager keeps each
    function's learned cost). ``room`` replaces ``has_room``, to compare another rule.
    """
    sizer = ChunkSizer(workers, chunksize)
    sizer.cost = learned_cost
    total = len(costs)
    next_index = 0
    pool = [_Worker() for _ in range(workers)]
    events: list[tuple[float, int, int]] = []  # (time an answer is back, tie-break, worker)
    order = itertools.count()
    messages = 0
    longest = 0.0
    now = 0.0
    last = 0.0

    def queued_seconds(w: _Worker) -> float | None:
        expected = 0.0
        for _, _, seconds in w.queue:
            if seconds is None:
                return None
            expected += seconds
        return expected

    def dispatch() -> None:
        nonlocal next_index, messages, longest
        sent = True
        while sent and next_index < total:
            sent = False
            for slot in sorted(range(workers), key=lambda s: len(pool[s].queue)):
                w = pool[slot]
                queued = queued_seconds(w)
                if next_index >= total:
                    continue
                busy = bool(w.queue)
                remaining = total - next_index
                known = remaining if known_length else None
                heavy = sizer.in_heavy_tail(known)
                if not room(chunks=len(w.queue), queued_seconds=queued, heavy_tail=heavy):
                    continue  # past the horizon (a heavy tail: one chunk already waits)
                if busy and (queued is None or not may_queue(
                    learned=sizer.learned, timed=False, tail=sizer.idle_only(known),
                )):
                    continue  # a probe runs alone; at a tail's end, only idle workers get chunks
                budget = prefetch_budget(queued) if busy and queued is not None else None
                size = sizer.next_size(remaining if known_length else None, budget)
                size = min(size, remaining)
                start = next_index
                next_index += size
                expected = None if sizer.cost is None else sizer.cost * size
                w.queue.append((start, size, expected))
                messages += 1
                sent = True
                # The worker starts it once it arrives and its earlier work is done.
                begin = max(now + latency, w.free_at)
                work = sum(costs[start : start + size])
                w.free_at = begin + work
                w.busy += work
                longest = max(longest, work)
                heapq.heappush(events, (w.free_at + latency, next(order), slot))

    dispatch()
    while events:
        now, _, slot = heapq.heappop(events)
        last = now
        start, size, _ = pool[slot].queue.popleft()
        sizer.observe(size, sum(costs[start : start + size]))
        dispatch()
    assert next_index == total
    return SimResult(last, float(sum(costs)), float(max(costs, default=0.0)), workers, messages,
                     sizer.cost, longest)
