"""A discrete-event simulation of the manager's dispatch, driven by the real scheduling code.

No process, no clock, no pipe: ``simulate`` plays one map of items with given costs (seconds)
on ``workers`` simulated workers, with a given one-way pipe latency, and returns when each
answer came back. Every decision is made by the same pure code the manager calls
(``allcores._engine.scheduler``): chunk sizes (``ChunkSizer``), whether a worker has room
(``has_room``), the tail rule (``ChunkSizer.idle_only``, ``may_queue``) and how much a
queued chunk may carry (``prefetch_budget``), and when a chunk waiting unstarted in a busy
worker's pipe is taken back for another worker (``overdue``, ``may_take_back``). What is
simulated here is only the loop around them, the same as ``Manager._dispatch`` /
``_next_chunk_for`` / ``_take_back``: every round, idlest worker first, one message per worker,
again while anything was sent; a busy worker is offered no probe and, in a heavy tail, one
small chunk (``has_room(heavy_tail=)``); a waiting chunk behind an overdue one goes first to a
worker that asks for work, and a worker left idle after the round takes one.

So a change to the policy shows up in ``tests/test_simulation.py`` in milliseconds, on hundreds
of seeds and cost shapes that a real-process benchmark could never afford.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from allcores._engine.scheduler import (
    ChunkSizer,
    has_room,
    may_queue,
    may_take_back,
    overdue,
    prefetch_budget,
)

Room = Callable[..., bool]


@dataclass
class _Sent:
    """One chunk in a simulated worker's pipe."""

    start: int
    size: int
    expected: float | None  # the seconds the sizer expected when it was cut (None: a probe)
    begin: float  # when the worker starts it
    end: float
    token: int  # tells its answer from that of a chunk taken back


@dataclass
class _Worker:
    queue: deque = field(default_factory=deque)  # _Sent, FIFO: the first one runs
    free_at: float = 0.0  # when the worker finishes what it was given so far
    busy: float = 0.0  # seconds of work it ran
    since: float = 0.0  # when, by the manager's clock, its running chunk started


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
    take_back: bool = True,
    chunk_overhead: float = 0.0,
) -> SimResult:
    """Play one map of ``costs`` on ``workers`` workers; see the module docstring.

    ``latency`` is one way (manager to worker or back); ``known_length=False`` plays an input of
    unknown length (a generator: no guided sizing, no tail); ``learned_cost`` starts the sizer
    with a per-item cost, as a second call of the same function does (the manager keeps each
    function's learned cost). ``room`` replaces ``has_room``, to compare another rule;
    ``take_back=False`` plays the engine without taking queued chunks back (every queued chunk
    here can be: W3's items are plain numbers). ``chunk_overhead`` is the seconds each chunk
    costs a worker on top of its items: on a machine whose cores the workers fill, the
    manager's CPU per chunk comes out of theirs, so a policy that sends many small chunks
    pays for them here as it does on real processes.
    """
    sizer = ChunkSizer(workers, chunksize)
    sizer.cost = learned_cost
    total = len(costs)
    next_index = 0
    pool = [_Worker() for _ in range(workers)]
    events: list[tuple[float, int, int, int]] = []  # (answer back, tie-break, worker, token)
    order = itertools.count()
    tokens = itertools.count()
    taken_back: set[int] = set()
    messages = 0
    longest = 0.0
    now = 0.0
    last = 0.0

    def queued_seconds(w: _Worker) -> float | None:
        expected = 0.0
        for sent in w.queue:
            if sent.expected is None:
                return None
            expected += sent.expected
        return expected

    def send(slot: int, start: int, size: int, expected: float | None) -> None:
        nonlocal messages, longest
        w = pool[slot]
        if not w.queue:
            w.since = now  # the manager's clock for the chunk it runs: from the send
        # The worker starts it once it arrives and its earlier work is done.
        begin = max(now + latency, w.free_at)
        work = sum(costs[start : start + size]) + chunk_overhead
        token = next(tokens)
        w.queue.append(_Sent(start, size, expected, begin, begin + work, token))
        w.free_at = begin + work
        w.busy += work
        messages += 1
        longest = max(longest, work)
        heapq.heappush(events, (w.free_at + latency, next(order), slot, token))

    def is_overdue(w: _Worker) -> bool:
        return bool(w.queue) and overdue(now - w.since, w.queue[0].expected)

    def unstarted(w: _Worker) -> int | None:
        """Where the oldest chunk not started by now waits in ``w``'s pipe (what the claim
        pipe's first id names in the engine), or None."""
        for position in range(1, len(w.queue)):
            if w.queue[position].begin > now:
                return position
        return None

    def holder_for(slot: int, *, idle_after_round: bool) -> int | None:
        """The worker whose waiting chunk ``slot`` should take (most overdue first)."""
        taker = pool[slot]
        best, best_late = None, float("-inf")
        for other in range(workers):
            w = pool[other]
            if other == slot or len(w.queue) < 2:
                continue
            if not may_take_back(holder_overdue=is_overdue(w), taker_idle=not taker.queue,
                                 taker_overdue=is_overdue(taker),
                                 input_left=not idle_after_round):
                continue
            if unstarted(w) is None:
                continue  # the manager's read of the claim pipe finds no id
            late = (now - w.since) - (w.queue[0].expected or 0.0)
            if late > best_late:
                best, best_late = other, late
        return best

    def take(holder: int, taker: int) -> None:
        w = pool[holder]
        position = unstarted(w)
        assert position is not None
        sent = w.queue[position]
        del w.queue[position]
        taken_back.add(sent.token)
        w.busy -= sent.end - sent.begin
        # What waited behind it in the holder's pipe starts that much sooner.
        later = [w.queue.pop() for _ in range(len(w.queue) - position)][::-1]
        w.free_at = w.queue[-1].end if w.queue else now
        for moved in later:
            taken_back.add(moved.token)
            begin = max(moved.begin - (sent.end - sent.begin), w.free_at)
            work = moved.end - moved.begin
            token = next(tokens)
            w.queue.append(_Sent(moved.start, moved.size, moved.expected, begin, begin + work,
                                 token))
            w.free_at = begin + work
            heapq.heappush(events, (w.free_at + latency, next(order), holder, token))
        send(taker, sent.start, sent.size, sent.expected)

    def dispatch() -> None:
        nonlocal next_index
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
                    learned=sizer.learned, timed=False,
                    tail=sizer.idle_only(known, take_back=take_back),
                )):
                    continue  # a probe runs alone; at a tail's end, only idle workers get chunks
                holder = holder_for(slot, idle_after_round=False) if take_back else None
                if holder is not None:
                    take(holder, slot)
                    sent = True
                    continue
                budget = prefetch_budget(queued) if busy and queued is not None else None
                size = sizer.next_size(remaining if known_length else None, budget)
                size = min(size, remaining)
                start = next_index
                next_index += size
                send(slot, start, size, None if sizer.cost is None else sizer.cost * size)
                sent = True
        if take_back:
            for slot in range(workers):
                if not pool[slot].queue:
                    holder = holder_for(slot, idle_after_round=True)
                    if holder is not None:
                        take(holder, slot)

    dispatch()
    while events:
        now, _, slot, token = heapq.heappop(events)
        if token in taken_back:
            continue
        last = now
        w = pool[slot]
        sent = w.queue.popleft()
        assert sent.token == token
        w.since = now  # the next chunk in its pipe started about when this answer left
        sizer.observe(sent.size, sum(costs[sent.start : sent.start + sent.size]))
        dispatch()
    assert next_index == total
    return SimResult(last, float(sum(costs)), float(max(costs, default=0.0)), workers, messages,
                     sizer.cost, longest)


def one_at_a_time(costs: Sequence[float], workers: int = 2) -> float:
    """The speedup of a perfect pull scheduler: one item at a time to the first idle worker,
    no round trip. No chunking scheduler that has not seen the items can promise more."""
    free = [0.0] * workers
    for cost in costs:
        free[free.index(min(free))] += cost
    return sum(costs) / max(free)
