"""What the manager writes down while it runs a pool: one record per chunk, plus incidents.

This is the cheap half of the run statistics (``allcores/_stats.py`` turns records into the
public frozen objects, ``allcores/_report.py`` draws them). Recording happens in the manager
thread when a chunk's answer arrives: one tuple and two list appends per *chunk*, never per item,
so even 200,000 tiny tasks cost nothing measurable (``benchmarks/stats_overhead.py``).

Clock: every time here is ``time.monotonic()``. The workers stamp their chunks with the same
clock, and the figures compare stamps taken in different processes. That is sound on Linux:
``CLOCK_MONOTONIC`` is one system-wide clock (per boot), not a per-process one, so a worker's
"started at" and the manager's "received at" are on one time line. (``perf_counter`` is the same
clock on Linux, but the documentation promises nothing across processes; monotonic is the one
whose meaning is system-wide.)

Memory stays bounded for an endless ``imap``: past ``MAX_RECORDS`` records, older ones are merged
into time buckets (:func:`compact`), which keep every sum (items, busy seconds, chunks) exact and
lose only the detail of where inside a bucket each chunk ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

# Chunk records kept per pool and per call before merging into time buckets: 50,000 records of
# ~10 fields are a few MiB, and a report draws at most REPORT_MAX_SPANS of them anyway.
MAX_RECORDS = 50_000
# Incidents (crashes, timeouts, retries, recycled workers) kept in detail; past that, counted.
MAX_INCIDENTS = 2_000
# Private switch for benchmarks/stats_overhead.py, which measures what recording costs by
# comparing pools with it on and off in one run. Read when a pool starts.
ENABLED = True


class Span(NamedTuple):
    """One chunk (``chunks == 1``) or a bucket of merged chunks of one worker and one call.

    Times are ``time.monotonic()`` seconds. For a bucket, ``start``/``end`` bound its chunks and
    the other fields are sums (``rss`` the largest).
    """

    worker: int  # the worker's slot, 0 .. workers-1 (a replacement takes its slot)
    job: int  # the call's id
    start: float  # the task function started
    end: float  # the task function returned (for the chunk's last item)
    items: int
    busy: float  # seconds in the task function
    load: float  # seconds unpickling the chunk's function and arguments in the worker
    back: float  # seconds from the task's end to its results in the manager's hands
    chunks: int
    rss: int  # the worker's resident memory after the chunk, bytes
    cpu: float = 0.0  # CPU seconds the worker got while in the task (below busy: CPU shared)


class Incident(NamedTuple):
    """Something that happened to a worker or an item besides running it."""

    time: float
    kind: str  # "start", "crash", "timeout", "retry", "recycle"
    worker: int | None
    job: int | None
    detail: str


class CallRecord:
    """One call's records (a map, an imap, an apply, a submit). Written by the manager thread.

    The caller reads it once the call is done (or copies its lists while it runs: appending in
    one thread while another copies is safe under the GIL, and compaction swaps whole lists).
    """

    __slots__ = ("created", "ended", "function", "incidents", "job", "pack_seconds", "spans",
                 "workers")

    def __init__(self, job: int, function: str, workers: int) -> None:
        self.job = job
        self.function = function
        self.workers = workers
        self.created = time.monotonic()
        self.ended: float | None = None
        self.spans: list[Span] = []
        self.incidents: list[Incident] = []
        self.pack_seconds = 0.0  # the manager pickling this call's arguments


class Recorder:
    """A pool's records: every call's chunks and incidents, and each worker's start."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.created = time.monotonic()
        self.ended: float | None = None
        self.spans: list[Span] = []
        self.incidents: list[Incident] = []
        self.incident_counts: dict[str, int] = {}
        self.functions: dict[int, str] = {}  # job id -> function name, for the report's hover
        self.pack_seconds = 0.0

    def chunk(self, call: CallRecord, span: Span, pack_seconds: float) -> None:
        """A chunk's answer arrived (manager thread)."""
        self.spans.append(span)
        call.spans.append(span)
        call.pack_seconds += pack_seconds
        self.pack_seconds += pack_seconds
        if len(self.spans) > MAX_RECORDS:
            spans = compact(self.spans, MAX_RECORDS // 4)
            if len(spans) > MAX_RECORDS // 2:
                # Thousands of one-chunk calls (apply_async in a loop): each call is a lane of
                # its own, so merging within lanes frees nothing, and compacting again on every
                # chunk made each call cost O(MAX_RECORDS). The pool-wide list merges across
                # calls then (each call's own list keeps its spans).
                spans = compact(spans, MAX_RECORDS // 4, by_call=False)
            self.spans = spans
        if len(call.spans) > MAX_RECORDS:
            call.spans = compact(call.spans, MAX_RECORDS // 4)

    def incident(self, kind: str, worker: int | None, call: CallRecord | None,
                 detail: str = "", also: Iterable[CallRecord] = ()) -> None:
        """Note a worker start, crash, timeout, retry or recycling (manager thread); ``also``
        names further calls it concerns (a worker replaced while they run)."""
        self.incident_counts[kind] = self.incident_counts.get(kind, 0) + 1
        event = Incident(time.monotonic(), kind, worker, None if call is None else call.job,
                         detail)
        if len(self.incidents) < MAX_INCIDENTS:
            self.incidents.append(event)
        for record in (call, *also) if call is not None else also:
            if len(record.incidents) < MAX_INCIDENTS:
                record.incidents.append(event)

    def call_started(self, call: CallRecord) -> None:
        if len(self.functions) < MAX_RECORDS:
            self.functions[call.job] = call.function


def compact(spans: list[Span], target: int, by_call: bool = True) -> list[Span]:
    """Merge ``spans`` into at most about ``target`` buckets per worker and call, keeping sums.

    Each worker's time line is cut into equal time buckets; the spans of one worker and one call
    that start in one bucket become one span. Used to bound memory and to keep a report of a
    200,000-chunk run small enough to open quickly. With ``by_call=False`` the spans of one
    worker merge whatever their call (a merged span names the call of its first span).
    """
    if len(spans) <= target or not spans:
        return list(spans)
    spans = clip_back(spans)
    first = min(s.start for s in spans)
    last = max(s.end for s in spans)
    lanes = len({(s.worker, s.job if by_call else 0) for s in spans})
    buckets = max(1, target // max(1, lanes))
    width = max((last - first) / buckets, 1e-9)
    merged: dict[tuple[int, int, int], list] = {}
    for s in spans:
        key = (s.worker, s.job if by_call else 0, int((s.start - first) / width))
        m = merged.get(key)
        if m is None:
            merged[key] = list(s)
        else:
            m[2] = min(m[2], s.start)
            m[3] = max(m[3], s.end)
            m[4] += s.items
            m[5] += s.busy
            m[6] += s.load
            m[7] += s.back
            m[8] += s.chunks
            m[9] = max(m[9], s.rss)
            m[10] += s.cpu
    out = [Span(*m) for m in merged.values()]
    out.sort(key=lambda s: s.start)
    return out


def clip_back(spans: list[Span]) -> list[Span]:
    """``spans`` with each chunk's ``back`` cut to the time its worker really spent on it.

    ``back`` is measured by the manager (task end to results in hand), so it includes the
    manager's turn; a worker that had its next chunk queued was already loading it meanwhile.
    The worker's own share ends where it began loading its next chunk.
    """
    by_worker: dict[int, list[Span]] = {}
    for s in spans:
        by_worker.setdefault(s.worker, []).append(s)
    out: list[Span] = []
    for lane in by_worker.values():
        lane.sort(key=lambda s: s.start)
        for s, nxt in zip(lane, [*lane[1:], None]):  # noqa: B905 - same length by construction
            if nxt is not None and s.chunks == 1:
                gap = max(0.0, nxt.start - nxt.load - s.end)
                if s.back > gap:
                    s = s._replace(back=gap)
            out.append(s)
    out.sort(key=lambda s: s.start)
    return out
