"""Scheduling decisions as pure code: chunk sizes, result ordering, retries, worker recycling.

Nothing here starts a process, reads a clock or touches a pipe: the manager feeds in what it
observed (durations, remaining items, exit codes) and acts on what comes back. That keeps every
decision unit-testable in microseconds (``tests/test_scheduler.py``).
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass

__all__ = [
    "ChunkSizer",
    "Reorderer",
    "RetryPolicy",
    "Verdict",
    "admit",
    "batch_limit",
    "batchable",
    "blame",
    "describe_exit",
    "has_room",
    "in_tail",
    "may_queue",
    "may_take_back",
    "overdue",
    "prefetch_budget",
    "should_recycle",
]

# A chunk should run about this long: long enough that the ~0.1 ms round trip per chunk costs
# under 1%, short enough that one chunk never holds up the end of a map noticeably.
TARGET_CHUNK_SECONDS = 0.02
# ...but never shorter than this when the cost is known, or a map of tiny items drowns in
# round trips at the end, where guided sizing alone would shrink chunks to one item.
MIN_CHUNK_SECONDS = 0.002
# Guided scheduling (OpenMP's ``schedule(guided)``): no chunk takes more than
# 1/(GUIDED_FACTOR * workers) of what is left, so chunks shrink toward the end and every worker
# finishes at about the same time. 4 keeps the heavy tail of W3b balanced on 2 workers.
GUIDED_FACTOR = 4
# Bounds the memory of one chunk (items and results are held in the parent while in flight).
MAX_CHUNK_ITEMS = 1 << 15
# How many results an ordered imap may hold back behind one slow item before it stops reading
# input: enough that a 200 ms item does not idle the other workers, bounded so memory stays flat.
MAX_REORDER_ITEMS = 1 << 16
# Weight of the newest observation in the running per-item cost estimate.
COST_SMOOTHING = 0.5
# A map is heavy-tailed once one item (a chunk's per-item average) took longer than the chunk
# target: the smoothed cost then says little about the next item, which may be one of those.
# Its tail starts when the work left per worker (at the mean cost so far: the smoothed cost
# jumps with each heavy item) is under this many of its costliest items. There chunks carry at
# most ``MIN_CHUNK_SECONDS`` of smoothed cost (one item for W3), so no chunk holds two heavy
# items (measured in tests/_simulation.py over 200 seeds of W3: 4 left a worst seed of 1.80x,
# 8 gives 1.83x).
HEAVY_TAIL_PEAKS = 8
# In a heavy tail one such small chunk may wait in a busy worker's pipe (whatever the smoothed
# cost says: it means little there), so a worker that finishes starts its next item at once
# instead of idling a round trip per item; until the work left per worker is under this many
# of the costliest items (its end), where chunks go only to idle workers, so none waits behind
# a heavy item while another worker runs dry. What a heavy item can strand before the end is one
# small chunk, which the other workers' remaining work covers. On real processes a round trip
# is far from free: each wakes the manager and a worker on cores the workers share, about
# 1 ms in all on a two-core VM; W3 over 200 simulated seeds at a 1 ms one-way latency: 1.76x
# mean, 1.64x worst when every item of the tail waited for its round trip, 1.88x / 1.78x with
# one queued (at 0.1 ms: 1.93x / 1.83x before, 1.94x / 1.85x after).
# A chunk that can be taken back from a busy worker's pipe (see ``may_take_back``) is not held
# to this: nothing it waits behind can strand it, so it may wait until the very end.
HEAVY_END_PEAKS = 4
# Chunks in a worker's pipe at most (the running one included) while a heavy tail queues.
HEAVY_QUEUE_CHUNKS = 2


class ChunkSizer:
    """Decides how many items the next chunk of a map carries.

    With a fixed ``chunksize`` it just returns it. Otherwise it learns the per-item cost from
    completed chunks (an exponentially weighted average), aims each chunk at
    ``TARGET_CHUNK_SECONDS``, caps it by guided scheduling when the number of remaining items is
    known, and starts with one-item probes while nothing is known yet. It also keeps the
    overall mean and the costliest item seen (``peak``): once one item took longer than the
    target, the map is heavy-tailed and its tail (:meth:`in_heavy_tail`) runs in small chunks,
    one of which may wait behind a busy worker's until the tail's end (:meth:`in_heavy_end`),
    where they go only to idle workers: a late chunk never holds two heavy items.

    >>> s = ChunkSizer(workers=2)
    >>> s.next_size(remaining=1000)
    1
    >>> s.observe(items=1, seconds=0.001)
    >>> s.next_size(remaining=1000)
    20
    """

    def __init__(
        self,
        workers: int,
        fixed: int | None = None,
        *,
        target_seconds: float = TARGET_CHUNK_SECONDS,
        min_seconds: float = MIN_CHUNK_SECONDS,
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"chunksize must be a positive integer, got {fixed!r}")
        self.workers = max(1, workers)
        self.fixed = fixed
        # The targets scale with the round trip they amortize: the defaults suit the local
        # engine's ~0.1 ms pipe; a cluster's ~1 ms scheduler round trip wants ten times more.
        self.target_seconds = target_seconds
        self.min_seconds = min_seconds
        self.cost: float | None = None  # seconds per item, once observed (smoothed)
        self.peak = 0.0  # the costliest per-item average of one chunk seen so far
        self.items_seen = 0
        self.seconds_seen = 0.0

    @property
    def learned(self) -> bool:
        return self.fixed is not None or self.cost is not None

    def observe(self, items: int, seconds: float) -> None:
        """Record that ``items`` items took ``seconds`` of compute in a worker."""
        if items <= 0:
            return
        seconds = max(seconds, 0.0)
        per_item = seconds / items
        if self.cost is None:
            self.cost = per_item
        else:
            self.cost += COST_SMOOTHING * (per_item - self.cost)
        self.peak = max(self.peak, per_item)
        self.items_seen += items
        self.seconds_seen += seconds

    def in_heavy_tail(self, remaining: int | None) -> bool:
        """Whether a map with ``remaining`` items left is heavy-tailed and in its tail.

        Heavy-tailed: one item took longer than the chunk target. Tail: the work left per
        worker is under ``HEAVY_TAIL_PEAKS`` such items (see the constant for why).

        >>> s = ChunkSizer(workers=2)
        >>> for _ in range(20):
        ...     s.observe(items=1, seconds=0.003)
        >>> s.in_heavy_tail(remaining=100)  # nothing long seen: small items, no risk
        False
        >>> s.observe(items=1, seconds=0.2)
        >>> s.in_heavy_tail(remaining=100)  # 100 items of 12 ms < 8 of 200 ms per worker
        True
        >>> s.in_heavy_tail(remaining=1000)
        False
        """
        return self._heavy_left(remaining, HEAVY_TAIL_PEAKS)

    def in_heavy_end(self, remaining: int | None) -> bool:
        """Whether a heavy-tailed map is at the end of its tail: the work left per worker is
        under ``HEAVY_END_PEAKS`` of its costliest items (chunks go only to idle workers)."""
        return self._heavy_left(remaining, HEAVY_END_PEAKS)

    def _heavy_left(self, remaining: int | None, peaks: float) -> bool:
        if remaining is None or self.cost is None or self.peak <= self.target_seconds:
            return False
        mean = self.seconds_seen / self.items_seen if self.items_seen else self.cost
        return remaining * mean < peaks * self.peak * self.workers

    def in_tail(self, remaining: int | None) -> bool:
        """Whether a map with ``remaining`` items left is in its tail: its heavy tail, or the
        tail :func:`in_tail` gives by chunk count (a cluster's driver cuts a chunk there only
        for a free slot, see backends/_driver.py)."""
        if remaining is None:
            return False
        if self.in_heavy_tail(remaining):
            return True
        return in_tail(remaining, self.next_size(remaining) or 1, self.workers)

    def idle_only(self, remaining: int | None, *, take_back: bool = False) -> bool:
        """Whether the local engine sends this map's chunks only to idle workers: at the end
        of its heavy tail, or in the tail by chunk count. (Before its end, a heavy tail lets
        one small chunk wait in a busy worker's pipe: ``has_room(heavy_tail=True)``.)

        ``take_back``: the chunk can be taken back from a busy worker's pipe until that worker
        starts it (:func:`may_take_back`); then nothing it waits behind can strand it, and the
        end of a heavy tail does not keep it from waiting there.
        """
        if remaining is None:
            return False
        if not take_back and self.in_heavy_end(remaining):
            return True
        return in_tail(remaining, self.next_size(remaining) or 1, self.workers)

    def next_size(self, remaining: int | None, budget: float | None = None) -> int:
        """Items for the next chunk; ``remaining`` is None for inputs of unknown length.

        ``budget`` caps the chunk's expected seconds (a chunk queued behind a busy worker's work
        is kept within the prefetch horizon, see :func:`prefetch_budget`); it never cuts a
        chunk below ``MIN_CHUNK_SECONDS`` of work, or one item.
        """
        if remaining is not None and remaining <= 0:
            return 0
        if self.fixed is not None:
            size = self.fixed
        elif self.cost is None:
            size = 1
        else:
            cost = max(self.cost, 1e-9)
            size = int(self.target_seconds / cost)
            if remaining is not None:
                size = min(size, math.ceil(remaining / (GUIDED_FACTOR * self.workers)))
            size = max(size, int(self.min_seconds / cost), 1)
            if self.in_heavy_tail(remaining):
                size = min(size, max(int(self.min_seconds / cost), 1))
            if budget is not None:
                size = min(size, max(int(budget / cost), int(self.min_seconds / cost), 1))
            size = min(size, MAX_CHUNK_ITEMS)
        if remaining is not None:
            size = min(size, remaining)
        return size


# -- dispatch: who gets what, and when -----------------------------------------------------
#
# The manager asks these functions, with plain numbers it observed, whether a worker may be sent
# more work, how much, and what a worker's death means; it keeps only the I/O and bookkeeping.
# ``tests/_simulation.py`` drives the same functions in a discrete-event simulation.
#
# Pull first. A worker runs its chunk on its main thread and reads its pipe only between
# chunks, so it cannot hand back a chunk waiting in its pipe while a long task runs, and
# running a chunk twice would run side effects twice. So the manager commits little: a chunk
# is queued behind a busy worker only while the work already in that pipe is expected to end
# within the prefetch horizon, the queued chunk is itself cut to fit the horizon, and in a
# map's tail nothing is queued behind busy workers at all. A queued chunk saves one round trip
# (~0.1 ms): that matters for tiny chunks, and is worth nothing for 20 ms ones, which are sent
# only to a worker that asked for work by finishing its last chunk. What an unexpectedly long
# task can strand behind it is at most one horizon of work, never a whole chunk of a skewed
# map. The exception is a heavy-tailed map, where the manager itself can take a waiting chunk
# back (see "taking a queued chunk back" below).

# Work expected to end within this many seconds may have a chunk queued behind it.
PREFETCH_HORIZON_SECONDS = 0.005
# Chunks in one worker's pipe at most, the running one included (tiny items, apply_async).
PREFETCH_MAX_CHUNKS = 16
# In the tail of a map (fewer than this many chunks per worker left), chunks go only to idle
# workers: a chunk queued behind an unexpectedly long item would wait there while another worker
# runs dry (W3b's 200 ms items come last).
PREFETCH_TAIL_CHUNKS = 2
# Single-item jobs (apply_async, submit) whose learned cost is known and below this many seconds
# share one message and one worker round trip with the jobs queued after them: one round trip
# (a pipe write, a worker wake-up, an answer) costs ~50-100 us, far more than such a task.
BATCH_TARGET_SECONDS = 0.002
# ...at most this many of them in one message (bounds the message and the burst of answers).
BATCH_MAX_PARTS = 256


def has_room(
    *,
    chunks: int,
    queued_seconds: float | None,
    running_timed: bool = False,
    lifespan_left: int | None = None,
    accepting: bool = True,
    heavy_tail: bool = False,
) -> bool:
    """Whether a worker may be sent one more chunk now.

    ``chunks`` are the chunks in its pipe (the running one included); ``queued_seconds`` the
    work they are expected to take (None while one's cost is unknown: a probe runs alone);
    ``running_timed`` whether a timed item runs (it runs alone, so its clock is honest);
    ``lifespan_left`` the items it may still take under ``maxtasksperchild`` (None: no limit);
    ``accepting`` False once it retires, stops or was killed for a timeout. ``heavy_tail``:
    the chunk belongs to a map in its heavy tail (``ChunkSizer.in_heavy_tail``), where one small
    chunk may wait behind the running one whatever the expected seconds say
    (``HEAVY_QUEUE_CHUNKS``).

    >>> has_room(chunks=0, queued_seconds=None)
    True
    >>> has_room(chunks=1, queued_seconds=0.020)  # a 20 ms chunk runs: nothing waits behind it
    False
    >>> has_room(chunks=1, queued_seconds=0.0005)  # a tiny one: queue the next behind it
    True
    """
    if not accepting:
        return False
    if lifespan_left is not None and lifespan_left <= 0:
        return False
    if chunks == 0:
        return True
    if running_timed or chunks >= PREFETCH_MAX_CHUNKS or queued_seconds is None:
        return False
    if heavy_tail:
        return chunks < HEAVY_QUEUE_CHUNKS
    return queued_seconds < PREFETCH_HORIZON_SECONDS


def may_queue(*, learned: bool, timed: bool, tail: bool, tiny_call: bool = False) -> bool:
    """Whether a job's next chunk may wait in a busy worker's pipe (where :func:`has_room` says
    that worker has room), rather than only go to an idle worker.

    ``learned``: the job's per-item cost is known (a probe runs alone); ``timed``: its items
    have a timeout (a timed item runs alone, so its clock is honest); ``tail``: the map is in
    its tail (``ChunkSizer.in_tail``), where a chunk queued behind an unexpectedly long item
    would wait while another worker runs dry; ``tiny_call``: a one-item call (apply_async,
    submit) whose learned cost is under ``BATCH_TARGET_SECONDS``. A one-item call is always
    "in its tail" by count, yet the calls queued after it are the pool's real backlog: queuing
    a batch of tiny calls behind a busy worker's tiny work is what saves their round trips.

    >>> may_queue(learned=True, timed=False, tail=True)
    False
    >>> may_queue(learned=True, timed=False, tail=True, tiny_call=True)
    True
    """
    if timed or not learned:
        return False
    return tiny_call or not tail


def prefetch_budget(queued_seconds: float) -> float:
    """Seconds of work a chunk queued behind ``queued_seconds`` of work may carry."""
    return max(PREFETCH_HORIZON_SECONDS - queued_seconds, 0.0)


# -- taking a queued chunk back --------------------------------------------------------------
#
# A chunk waiting in a busy worker's pipe is not lost to the others: until that worker starts
# it, the manager can take it back and give it to a worker that asks for work (the exactly-once
# protocol, a claim pipe per worker, is in manager.py and worker_main.py). Taking back has a
# price (the chunk crosses a second pipe, one round trip for the worker that takes it), so it
# is done only where waiting costs more: behind a running chunk that is overdue (its worker is
# running something longer than expected, perhaps one of a heavy tail's long items), or for a
# worker that would otherwise sit idle. W3 over 200 simulated seeds: benchmarks/sim_takeback.py.

# A running chunk is overdue once it has run this many times its expected seconds...
OVERDUE_FACTOR = 1.0
# ...plus this much: a chunk's clock in the manager starts at the answer before it, so it
# carries a round trip's noise (one way about 0.1-1 ms on two busy cores).
OVERDUE_MARGIN_SECONDS = 0.001


def overdue(running_for: float, expected: float | None) -> bool:
    """Whether a chunk expected to take ``expected`` seconds (None: unknown, a probe) has run
    longer than that after ``running_for`` seconds.

    >>> overdue(0.050, expected=0.003)
    True
    >>> overdue(0.003, expected=0.003)
    False
    """
    if expected is None:
        return False
    return running_for > OVERDUE_FACTOR * expected + OVERDUE_MARGIN_SECONDS


def may_take_back(*, holder_overdue: bool, taker_idle: bool, taker_overdue: bool,
                  input_left: bool) -> bool:
    """Whether a worker that asks for work (the taker) should get the chunk waiting unstarted
    in another worker's pipe (the holder's) rather than new input.

    Behind an overdue chunk, the waiting one goes to a taker that is idle or whose own running
    chunk is on time: a worker that started a long item must not start the input cut after
    the waiting chunk before it (one item at a time to the first idle worker keeps input
    order). A taker left idle once no input is left takes any waiting chunk: it would only
    wait for a round trip anyway, where the holder may be busy for long.

    >>> may_take_back(holder_overdue=True, taker_idle=False, taker_overdue=False,
    ...               input_left=True)
    True
    >>> may_take_back(holder_overdue=False, taker_idle=True, taker_overdue=False,
    ...               input_left=True)
    False
    """
    if holder_overdue and not taker_overdue:
        return True
    return taker_idle and not input_left


def in_tail(remaining: int | None, chunk_size: int, workers: int) -> bool:
    """Whether a map with ``remaining`` items left (None: unknown length) is in its tail.

    >>> in_tail(remaining=3, chunk_size=1, workers=2)
    True
    >>> in_tail(remaining=None, chunk_size=1, workers=2)
    False
    """
    if remaining is None:
        return False
    return remaining < PREFETCH_TAIL_CHUNKS * max(1, workers) * max(1, chunk_size)


def batchable(*, items: int, cost: float | None, timed: bool, isolated: bool) -> bool:
    """Whether a chunk of a single-item job may share a message with others.

    Only tiny work with a learned cost: a probe (cost unknown) runs alone, a timed item runs
    alone (its clock starts when it is sent), an isolated item runs alone (it is being re-run to
    find which item killed a worker, or it is a retry).
    """
    if timed or isolated or cost is None or items != 1:
        return False
    return cost < BATCH_TARGET_SECONDS


def batch_limit(*, waiting: int, workers: int, lifespan_left: int | None = None) -> int:
    """How many single-item jobs one message may carry, with ``waiting`` jobs queued.

    The waiting jobs are shared among the workers (guided, as chunks are), so a burst of
    apply_async calls keeps every worker busy rather than filling one pipe.

    >>> batch_limit(waiting=1000, workers=2)
    256
    >>> batch_limit(waiting=10, workers=2)
    5
    """
    limit = min(BATCH_MAX_PARTS, max(1, math.ceil(waiting / max(1, workers))))
    if lifespan_left is not None:
        limit = min(limit, max(1, lifespan_left))
    return limit


class Verdict:
    """What a worker's death means for the message it was running (see :func:`blame`)."""

    TIMEOUT = "timeout"  # its one item ran past its timeout: that item fails (or is retried)
    ISOLATE = "isolate"  # several items could be the culprit: each runs again alone
    CRASHED = "crashed"  # its one item killed the worker: that item fails (or is retried)


def blame(*, items: int, parts: int = 1, timed_out: bool = False) -> str:
    """The decision part of handling a worker that died running a message.

    ``items`` counts the items of the message's running chunk, ``parts`` the chunks the message
    carried (a batch of single-item jobs has several); ``timed_out`` is True when the manager
    killed it for a timeout. Chunks queued behind the running message never started: they are
    sent again as they were, whatever the verdict.

    >>> blame(items=1)
    'crashed'
    >>> blame(items=1, parts=40)  # a batch: which of the 40 jobs did it?
    'isolate'
    """
    if timed_out:
        return Verdict.TIMEOUT
    if items > 1 or parts > 1:
        return Verdict.ISOLATE
    return Verdict.CRASHED


class Reorderer:
    """Turns segments that complete in any order into the input's order.

    A segment is a run of consecutive input positions ``[start, start + length)`` with its values
    (fewer values than ``length`` when failed items are skipped). ``add`` returns the segments that
    can now be delivered, in order.

    >>> r = Reorderer()
    >>> r.add(2, 2, ["c", "d"])
    []
    >>> r.add(0, 2, ["a", "b"])
    [['a', 'b'], ['c', 'd']]
    """

    def __init__(self, ordered: bool = True) -> None:
        self.ordered = ordered
        self.next_position = 0
        self._waiting: dict[int, tuple[int, list]] = {}
        self.buffered_items = 0  # input positions held back, waiting for an earlier segment

    def add(self, start: int, length: int, values: list) -> list[list]:
        if not self.ordered:
            return [values]
        if start != self.next_position:
            self._waiting[start] = (length, values)
            self.buffered_items += length
            return []
        ready = [values]
        self.next_position += length
        while self.next_position in self._waiting:
            length, values = self._waiting.pop(self.next_position)
            self.buffered_items -= length
            ready.append(values)
            self.next_position += length
        return ready

    @property
    def buffered(self) -> int:
        """Segments held back waiting for an earlier one."""
        return len(self._waiting)


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed item runs again, and after how long.

    Attributes:
        retries: how many more times an item may run after its first failure.
        retry_on: exception types (raised by the task) that earn a retry; crashes and timeouts
            always do while retries are left.
        backoff: seconds before the first retry; doubles with each further attempt.
        max_backoff: the longest wait between two attempts.
    """

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    backoff: float = 0.05
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries!r}")

    def delay(self, attempt: int, error: BaseException, *, infrastructure: bool) -> float | None:
        """Seconds to wait before running an item again, or None to give up.

        ``attempt`` counts the runs so far (1 after the first failure); ``infrastructure`` is
        True for crashes and timeouts, which are retried whatever ``retry_on`` says.
        """
        if attempt > self.retries:
            return None
        if not infrastructure and not isinstance(error, self.retry_on):
            return None
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1))


def admit(in_flight_chunks: int, available_bytes: int | None, reserve_bytes: int | None) -> bool:
    """Whether to send more work now, given the machine's available memory.

    Below the reserve, new work waits, so the OOM killer is not left to pick a victim; but one
    chunk is always allowed when nothing runs, so a pool never deadlocks on memory it does not
    hold.
    """
    if reserve_bytes is None or available_bytes is None or in_flight_chunks == 0:
        return True
    return available_bytes >= reserve_bytes


def should_recycle(
    items_done: int,
    max_items: int | None,
    rss_bytes: int | None,
    max_rss_bytes: int | None,
) -> bool:
    """Whether a worker should be retired after its current work (lifespan or memory cap)."""
    if max_items is not None and items_done >= max_items:
        return True
    return max_rss_bytes is not None and rss_bytes is not None and rss_bytes > max_rss_bytes


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# A SIGKILL is blamed on the OOM killer when the machine had under this fraction of its memory
# available, or the worker alone held over BIG_WORKER_FRACTION of it.
LOW_MEMORY_FRACTION = 0.1
BIG_WORKER_FRACTION = 0.3

_SIGNAL_CAUSES = {
    "SIGSEGV": "a segmentation fault, usually a bug in a C extension or ctypes code",
    "SIGBUS": "a bus error, usually a truncated memory-mapped file or a C extension bug",
    "SIGABRT": "an abort, usually a failed assertion in a C extension or a double free",
    "SIGFPE": "a fatal arithmetic error in native code",
    "SIGILL": "an illegal instruction: a native library built for another CPU",
    "SIGTERM": "it was terminated by another process (SIGTERM)",
}


def describe_exit(
    exitcode: int | None,
    *,
    last_rss_bytes: int | None = None,
    available_bytes: int | None = None,
    total_bytes: int | None = None,
) -> tuple[str | None, str]:
    """The signal name (or None) and the likely cause of a worker's death, in plain words."""
    if exitcode is None:
        return None, "the worker disappeared without an exit status"
    if exitcode >= 0:
        return None, (
            f"the worker exited with status {exitcode} while running the item "
            "(os._exit(), sys.exit() in a C extension, or a library that called exit())"
        )
    name = _signal_name(-exitcode)
    if name == "SIGKILL":
        evidence = []
        if last_rss_bytes is not None:
            evidence.append(f"the worker last used {last_rss_bytes / 2**20:.0f} MiB")
        if available_bytes is not None and total_bytes:
            evidence.append(
                f"the machine has {available_bytes / 2**20:.0f} MiB of "
                f"{total_bytes / 2**20:.0f} MiB available"
            )
        total = total_bytes or 0
        machine_low = available_bytes is not None and available_bytes < LOW_MEMORY_FRACTION * total
        worker_big = last_rss_bytes is not None and last_rss_bytes > BIG_WORKER_FRACTION * total
        low_memory = bool(total) and (machine_low or worker_big)
        cause = (
            "killed by SIGKILL: probably the out-of-memory killer"
            if low_memory
            else "killed by SIGKILL: by another process (kill -9) or the out-of-memory killer"
        )
        if evidence:
            cause += " (" + "; ".join(evidence) + ")"
        return name, cause
    return name, _SIGNAL_CAUSES.get(name, f"killed by {name}")
