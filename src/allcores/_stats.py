"""Run statistics: where the time of a call (or of a whole pool) went, as frozen numbers.

``MapResults.stats``, ``Pool.statistics()`` and ``Executor.statistics()`` return a
:class:`RunStats`; the progress bar and the HTML report (``allcores.report``) are renderers over
it. The numbers come from one record per chunk that the manager keeps (``_engine/recording.py``).

How a worker's time is split, over the run's wall time (from the call's start to its end)::

    |-- start-up --|== busy ==|transfer|== busy ==| idle |== busy ==|transfer|---- tail ----|
     before its first chunk    unpickle arguments,  gaps between      after its last results
     (process start, probes)   pickle and return    chunks

The shares of the lost time (``Losses``) are each part summed over the workers, divided by
``workers * wall_seconds``; ``busy_share + startup + tail + transfer + idle == 1``.
"""

from __future__ import annotations

import statistics as _statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from allcores._engine.recording import CallRecord, Incident, Recorder, Span, clip_back, compact

__all__ = ["Losses", "RunStats", "WorkerStats"]

# A share of the workers' time at or above which the verdict names a cause.
NOTABLE_SHARE = 0.05
# Above this efficiency (busy share) the verdict says the run used the cores well.
GOOD_EFFICIENCY = 0.9
# Below this share of CPU time in the task's wall time, the verdict says the cores were shared
# (tasks that sleep or wait on I/O also land here, and the sentence says what it measured).
CPU_SHARED = 0.75


@dataclass(frozen=True)
class WorkerStats:
    """One worker (a slot: a replaced worker's successor keeps its number) during a run."""

    worker: int
    """The worker's number, 0 .. workers-1 (``allcores.worker.current().id``)."""
    tasks: int
    """Items it ran (an item retried counts each time it ran)."""
    chunks: int
    """Chunks (messages of several items) it ran."""
    busy_seconds: float
    """Time inside the task function."""
    transfer_seconds: float
    """Time moving work: unpickling the arguments, pickling and sending the results."""
    startup_seconds: float
    """Time from the run's start to its first chunk (process start, the first round trip)."""
    tail_seconds: float
    """Time from its last results to the run's end: waiting while other workers finished."""
    idle_seconds: float
    """Time between chunks with nothing to do (no input ready, or results not consumed)."""
    peak_rss: int
    """Its largest resident memory after a chunk, in bytes (0 where unknown)."""
    starts: int
    """Processes started in this slot during the run (more than one: it was replaced)."""
    crashes: int
    """Times its process died while running an item."""
    timeouts: int
    """Items stopped for running past their timeout (the process is replaced)."""
    recycled: int
    """Times it was retired on purpose (maxtasksperchild or max_memory)."""
    cpu_seconds: float = 0.0
    """CPU time it got while in the task function; well below ``busy_seconds`` when other
    processes competed for its core (a busy machine, or more workers than cores)."""


@dataclass(frozen=True)
class Losses:
    """Shares of the workers' total time (``workers * wall_seconds``) not spent in the task."""

    startup: float
    """Before each worker's first chunk: starting processes, the first probe round trip."""
    tail: float
    """After each worker's last chunk, waiting for the slowest: the tail imbalance."""
    transfer: float
    """Pickling and moving arguments and results (IPC)."""
    idle: float
    """Gaps between chunks: input not ready, results not consumed, a worker restarting."""


@dataclass(frozen=True)
class RunStats:
    """Where the time of one call (``MapResults.stats``) or one pool went.

    >>> import allcores
    >>> stats = allcores.map(abs, range(1000), workers=2).stats
    >>> stats.items, stats.workers
    (1000, 2)
    """

    scope: str
    """"call" (one map, imap or apply) or "pool" (everything a pool ran so far)."""
    function: str
    """The task function's name (for a pool: the functions, comma-separated)."""
    workers: int
    """Worker processes of the pool."""
    started: float
    """When the run started, seconds since the epoch (``time.time()`` clock)."""
    wall_seconds: float
    """From the call's submission (the pool's start) to its end (now, if still running)."""
    items: int
    """Items run (an item retried counts each time it ran)."""
    chunks: int
    """Chunks sent to workers."""
    busy_seconds: float
    """Time in the task function, summed over workers: the serial time the run implies."""
    items_per_second: float
    """``items / wall_seconds``."""
    speedup: float
    """``busy_seconds / wall_seconds``: how many cores' worth of work the run did at once."""
    efficiency: float
    """``speedup / workers``: the share of the workers' time spent in the task function."""
    losses: Losses
    """The other shares of the workers' time, by cause."""
    pickle_seconds: float
    """The caller's process pickling arguments (not counted in the workers' time)."""
    retries: int
    """Items scheduled to run again after a failure."""
    crashes: int
    """Worker processes that died while running an item."""
    timeouts: int
    """Items stopped for running past their timeout."""
    recycled: int
    """Workers retired on purpose (maxtasksperchild, max_memory)."""
    per_worker: tuple[WorkerStats, ...]
    """One entry per worker, by worker number."""
    spans: tuple[Span, ...]
    """The timeline: one entry per chunk, or per bucket of merged chunks (``chunks > 1``) once
    there are more than ``allcores._engine.recording.MAX_RECORDS``; times are seconds from the
    run's start."""
    incidents: tuple[Incident, ...]
    """Worker starts, crashes, timeouts, retries and recycling, seconds from the run's start
    (the first ``MAX_INCIDENTS``; the counts above are exact)."""
    functions: tuple[tuple[int, str], ...] = ()
    """Call id -> task function name, for the spans' ``job`` field."""
    cpu_seconds: float = 0.0
    """CPU time the workers got while in the task function, summed; compare with
    ``busy_seconds`` to see whether the workers had their cores to themselves."""

    @property
    def chunk_sizes(self) -> tuple[tuple[float, float], ...]:
        """(seconds from the start, mean items per chunk) for each span, in time order."""
        return tuple((s.start, s.items / s.chunks) for s in self.spans if s.chunks)

    @property
    def peak_rss(self) -> int:
        """The largest resident memory any worker reported, in bytes."""
        return max((w.peak_rss for w in self.per_worker), default=0)

    def verdict(self) -> str:
        """Where the time went, in a few plain sentences."""
        return _verdict(self)

    def summary(self) -> str:
        """A short text table of the figures, for logs and terminals."""
        return _summary(self)

    def to_dict(self, *, spans: bool = False) -> dict[str, Any]:
        """The figures as plain JSON-ready data (the timeline only with ``spans=True``)."""
        out = asdict(self)
        out.pop("spans")
        out.pop("functions")
        out["incidents"] = [i._asdict() for i in self.incidents]
        out["verdict"] = self.verdict()
        out["peak_rss"] = self.peak_rss
        if spans:
            out["spans"] = [s._asdict() for s in self.spans]
        return out


def call_stats(record: CallRecord, pool_workers: int | None = None) -> RunStats:
    """The statistics of one call from its record (its end is now if it is still running)."""
    return _build(
        "call", record.function, pool_workers or record.workers, record.created, record.ended,
        list(record.spans), list(record.incidents), record.pack_seconds,
        ((record.job, record.function),),
    )


def calls_stats(records: Sequence[CallRecord], workers: int, name: str = "") -> RunStats:
    """The statistics of several calls taken as one run (a batch tool's waves of work)."""
    if not records:
        return empty_stats(name, workers, 0.0, 0)
    ended = [r.ended for r in records]
    functions = tuple((r.job, r.function) for r in records)
    return _build(
        "call", ", ".join(sorted({r.function for r in records})), workers,
        min(r.created for r in records), None if None in ended else max(e for e in ended if e),
        [s for r in records for s in r.spans], [e for r in records for e in r.incidents],
        sum(r.pack_seconds for r in records), functions,
    )


def pool_stats(recorder: Recorder) -> RunStats:
    """The statistics of everything a pool ran, from its start to its end (or now)."""
    functions = dict(recorder.functions)
    names = ", ".join(sorted(set(functions.values())))
    return _build(
        "pool", names, recorder.workers, recorder.created, recorder.ended, list(recorder.spans),
        list(recorder.incidents), recorder.pack_seconds, tuple(functions.items()),
        counts=dict(recorder.incident_counts),
    )


def empty_stats(function: str, workers: int, seconds: float, items: int) -> RunStats:
    """Statistics of work run in the caller's process (the batch tools' one-core shortcut)."""
    wall = max(seconds, 1e-9)
    return RunStats(
        "call", function, workers, time.time() - seconds, seconds, items, 0, seconds,
        items / wall, 1.0, 1.0 / max(1, workers), Losses(0.0, 0.0, 0.0, 0.0), 0.0, 0, 0, 0, 0,
        (WorkerStats(0, items, 0, seconds, 0.0, 0.0, 0.0, 0.0, 0, 1, 0, 0, 0),), (), (),
    )


def _build(
    scope: str,
    function: str,
    workers: int,
    t0: float,
    ended: float | None,
    spans: list[Span],
    incidents: list[Incident],
    pack_seconds: float,
    functions: tuple[tuple[int, str], ...],
    counts: dict[str, int] | None = None,
) -> RunStats:
    now = time.monotonic()
    t1 = ended if ended is not None else now
    wall = max(t1 - t0, 1e-9)
    spans = clip_back(spans)
    if counts is None:
        counts = {}
        for event in incidents:
            counts[event.kind] = counts.get(event.kind, 0) + 1
    lanes: dict[int, list[Span]] = {w: [] for w in range(workers)}
    for s in spans:
        lanes.setdefault(s.worker, []).append(s)
    per_worker = []
    for worker, lane in sorted(lanes.items()):
        kinds = [e.kind for e in incidents if e.worker == worker]
        per_worker.append(_worker_stats(worker, lane, kinds, t0, t1, wall))
    busy = sum(w.busy_seconds for w in per_worker)
    capacity = wall * max(1, len(per_worker))
    items = sum(s.items for s in spans)
    losses = Losses(
        sum(w.startup_seconds for w in per_worker) / capacity,
        sum(w.tail_seconds for w in per_worker) / capacity,
        sum(w.transfer_seconds for w in per_worker) / capacity,
        sum(w.idle_seconds for w in per_worker) / capacity,
    )
    relative = tuple(
        s._replace(start=s.start - t0, end=s.end - t0) for s in sorted(spans, key=_start)
    )
    events = tuple(e._replace(time=e.time - t0) for e in incidents)
    return RunStats(
        scope=scope,
        function=function,
        workers=workers,
        started=time.time() - (now - t0),
        wall_seconds=wall,
        items=items,
        chunks=sum(s.chunks for s in spans),
        busy_seconds=busy,
        items_per_second=items / wall,
        speedup=busy / wall,
        efficiency=busy / capacity,
        losses=losses,
        pickle_seconds=pack_seconds,
        retries=counts.get("retry", 0),
        crashes=counts.get("crash", 0),
        timeouts=counts.get("timeout", 0),
        recycled=counts.get("recycle", 0),
        per_worker=tuple(per_worker),
        spans=relative,
        incidents=events,
        functions=functions,
        cpu_seconds=sum(w.cpu_seconds for w in per_worker),
    )


def _start(s: Span) -> float:
    return s.start


def _worker_stats(worker: int, lane: list[Span], kinds: list[str], t0: float, t1: float,
                  wall: float) -> WorkerStats:
    starts = kinds.count("start")
    crashes, timeouts = kinds.count("crash"), kinds.count("timeout")
    recycled = kinds.count("recycle")
    if not lane:
        return WorkerStats(worker, 0, 0, 0.0, 0.0, 0.0, 0.0, wall, 0, starts, crashes,
                           timeouts, recycled)
    busy = sum(s.busy for s in lane)
    transfer = sum(s.load + s.back for s in lane)
    first = min(s.start - s.load for s in lane)
    last = max(s.end + s.back for s in lane)
    startup = min(wall, max(0.0, first - t0))
    tail = min(wall - startup, max(0.0, t1 - last))
    # The parts come from clocks read at different moments; keep them within the wall time.
    room = max(0.0, wall - startup - tail)
    busy = min(busy, room)
    transfer = min(transfer, room - busy)
    idle = max(0.0, room - busy - transfer)
    return WorkerStats(
        worker, sum(s.items for s in lane), sum(s.chunks for s in lane), busy, transfer,
        startup, tail, idle, max(s.rss for s in lane), starts, crashes, timeouts, recycled,
        sum(s.cpu for s in lane),
    )


# -- renderers over the numbers ----------------------------------------------------------------


def _seconds(x: float) -> str:
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    return f"{x * 1e6:.3g} us"


def _verdict(st: RunStats) -> str:
    if not st.spans and st.chunks == 0:
        if st.items:
            return (f"The work ran in the calling process ({st.items} items in "
                    f"{_seconds(st.wall_seconds)}): too little to be worth starting workers.")
        return "Nothing ran."
    out = [
        f"{st.items:,} items ran in {_seconds(st.wall_seconds)} on {st.workers} "
        f"worker{'s' * (st.workers != 1)}: {st.speedup:.2f} cores' worth of work at once "
        f"({st.efficiency:.0%} of the workers' time was spent in {st.function or 'the task'})."
    ]
    if st.crashes or st.timeouts:
        parts = []
        if st.crashes:
            parts.append(f"{st.crashes} worker crash{'es' * (st.crashes != 1)}")
        if st.timeouts:
            parts.append(f"{st.timeouts} timeout{'s' * (st.timeouts != 1)}")
        first = next((e for e in st.incidents if e.kind in ("crash", "timeout")), None)
        cause = f" (first: {first.detail})" if first is not None else ""
        out.append(f"{' and '.join(parts)} cost restarts{cause}.")
    cpu_shared = bool(st.cpu_seconds and st.busy_seconds
                      and st.cpu_seconds < CPU_SHARED * st.busy_seconds)
    if cpu_shared:
        out.append(
            f"But the workers got a CPU for only {st.cpu_seconds / st.busy_seconds:.0%} of the "
            f"time they were in the task ({_seconds(st.cpu_seconds)} of "
            f"{_seconds(st.busy_seconds)}): the tasks waited (I/O, sleep, locks) or other "
            "processes competed for the cores (a busy machine, or more workers than cores); "
            "a speedup measured against one core will be lower than the figure above."
        )
    if st.efficiency >= GOOD_EFFICIENCY and not cpu_shared:
        out.append("The cores were kept busy: little more is to be gained from scheduling.")
    causes = sorted(
        ((getattr(st.losses, k), k) for k in ("startup", "tail", "transfer", "idle")),
        reverse=True,
    )
    for share, cause in causes:
        if share < NOTABLE_SHARE:
            break
        out.append(_explain(st, cause, share))
    sizes = [s.busy / s.chunks for s in st.spans if s.chunks]
    if sizes and st.efficiency < GOOD_EFFICIENCY:
        typical = _statistics.median(sizes)
        if typical < 1e-3 and st.losses.transfer >= NOTABLE_SHARE:
            out.append(
                f"Chunks were short (median {_seconds(typical)} of work each): pass a larger "
                "chunksize, or give each task more work."
            )
    if st.retries:
        out.append(f"{st.retries} item{'s' * (st.retries != 1)} ran again after a failure.")
    if st.recycled:
        out.append(f"{st.recycled} worker{'s were' if st.recycled != 1 else ' was'} recycled "
                   "(maxtasksperchild or max_memory).")
    return " ".join(out)


def _explain(st: RunStats, cause: str, share: float) -> str:
    if cause == "tail":
        return _explain_tail(st, share)
    if cause == "startup":
        first = min((w.startup_seconds for w in st.per_worker), default=0.0)
        return (
            f"{share:.0%} went to start-up: workers got their first chunk after "
            f"{_seconds(first)} or more (starting processes, a first probe to learn each item's "
            "cost); for short runs keep the pool (allcores.map does) and give it more work."
        )
    if cause == "transfer":
        return (
            f"{share:.0%} went to handing work over: unpickling arguments, and from each task's "
            "end until its results reached the pool (pickling, the pipe, and waiting for a CPU "
            "on a busy machine). If it stays large on an idle machine, share big inputs once "
            "(allcores.share), return smaller results, or do more work per item."
        )
    return (
        f"{share:.0%} was idle between chunks: workers waited for input or for the caller to "
        "take results (a slow input generator, or an imap consumer slower than the workers)."
    )


def _explain_tail(st: RunStats, share: float) -> str:
    waiting = max(st.per_worker, key=lambda w: w.tail_seconds)
    finishing = min(st.per_worker, key=lambda w: w.tail_seconds)
    tail_start = st.wall_seconds - waiting.tail_seconds
    last = [s for s in st.spans if s.worker == finishing.worker and s.end > tail_start]
    detail = ""
    if last:
        items = sum(s.items for s in last)
        per_item = sum(s.busy for s in last) / max(1, items)
        if items == 1:
            detail = f": the last item on worker {finishing.worker} took {_seconds(per_item)}"
        else:
            detail = (f": the last {items} items on worker {finishing.worker} took "
                      f"{_seconds(per_item)} each")
    return (
        f"{share:.0%} was lost in the tail: worker {waiting.worker} was idle for the last "
        f"{_seconds(waiting.tail_seconds)} while worker {finishing.worker} finished{detail}. "
        "Put the longest items first, or let chunks shrink (chunksize='auto')."
    )


def _summary(st: RunStats) -> str:
    lines = [
        f"{st.scope} of {st.function or '-'}: {st.items:,} items in {st.chunks:,} chunks, "
        f"{_seconds(st.wall_seconds)} wall, {st.items_per_second:,.0f} items/s, "
        f"speedup {st.speedup:.2f} on {st.workers} workers",
        f"lost: start-up {st.losses.startup:.1%}, tail {st.losses.tail:.1%}, "
        f"transfer {st.losses.transfer:.1%}, idle {st.losses.idle:.1%}; "
        f"retries {st.retries}, crashes {st.crashes}, timeouts {st.timeouts}, "
        f"recycled {st.recycled}",
        f"{'worker':>6} {'tasks':>9} {'chunks':>7} {'busy':>9} {'transfer':>9} {'start-up':>9} "
        f"{'tail':>9} {'idle':>9} {'peak RSS':>9}",
    ]
    for w in st.per_worker:
        lines.append(
            f"{w.worker:>6} {w.tasks:>9,} {w.chunks:>7,} {_seconds(w.busy_seconds):>9} "
            f"{_seconds(w.transfer_seconds):>9} {_seconds(w.startup_seconds):>9} "
            f"{_seconds(w.tail_seconds):>9} {_seconds(w.idle_seconds):>9} "
            f"{w.peak_rss / 2**20:>6.0f} MiB"
        )
    return "\n".join(lines)


def merged_spans(spans: Sequence[Span], limit: int) -> list[Span]:
    """``spans``, merged into time buckets when there are more than ``limit`` (for drawing)."""
    if len(spans) <= limit:
        return list(spans)
    return compact(list(spans), limit)
