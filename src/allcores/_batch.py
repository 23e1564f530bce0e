"""How the batch tools (images, data, simulate) reach the engine: one helper, one place.

Each tool used to carry its own small shim over ``allcores.map``/``imap``, its own worker-count
check, its own progress bar and its own "one core: run it here" shortcut. :class:`BatchRun`
is all of these once, plus what the tools had none of: run statistics over the whole run (a
tool may make several calls, as ``simulate`` does in waves) and the HTML report.

::

    with BatchRun(workers, tool="images", progress=True, total=n, report="run.html") as run:
        for outcome in run.imap(process_one, items, ordered=False, on_error="collect"):
            run.advance(1, postfix="12 done, 0 failed")
    summary.stats = run.stats        # a RunStats over every call the run made

Calls go to the shared default pool of ``allcores.map`` (so a tool called in a loop pays no
process start-up twice). With one worker, or a single item, the items run in this process:
no process is worth starting, and the results are the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from allcores._engine.client import check_workers
from allcores._engine.messages import CALL_ONE
from allcores._engine.recording import CallRecord, Span

__all__ = ["BatchRun", "resolve_workers"]

# Ids of in-process calls (the one-core shortcut), apart from the engine's job ids.
_inline_ids = iter(range(-1, -(1 << 62), -1))


def resolve_workers(workers: Any) -> int:
    """The one worker-count check of the batch tools: None is every core; else a positive int."""
    try:
        return check_workers(workers)
    except ValueError:
        raise ValueError(
            f"workers must be a positive whole number (or None for every core), got {workers!r}"
        ) from None


class BatchRun:
    """One run of a batch tool on the engine: worker count, progress, statistics, report.

    Args:
        workers: processes to use; None is every core (``allcores.cpu_count()``).
        tool: the tool's name, shown on the progress bar and in the report.
        progress: draw a progress bar on stderr (tqdm when installed, a plain line if not).
        total: the count the progress bar goes to (items, images, samples...).
        unit: what the bar counts.
        report: a path: write the HTML report there when the run ends (checked at once, so a
            bad path fails before the work, not after it).
    """

    def __init__(
        self,
        workers: Any,
        *,
        tool: str,
        progress: bool = False,
        total: int | None = None,
        unit: str = "it",
        report: str | os.PathLike[str] | None = None,
    ) -> None:
        self.workers = resolve_workers(workers)
        self.tool = tool
        self._report = None
        if report is not None:
            from allcores._report import check_path

            self._report = check_path(report)
        self._bar: Any = None
        if progress:
            from allcores._progress import make_progress

            self._bar = make_progress(True, total, desc=tool, unit=unit)
        self._records: list[CallRecord] = []
        self._stats: Any = None
        self._closed = False

    # -- running ----------------------------------------------------------------------------

    def imap(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        ordered: bool = True,
        on_error: str = "raise",
        chunksize: int | str = "auto",
        isolate: bool = False,
    ) -> Iterator[Any]:
        """``fn(item)`` for each item, results as they arrive (in order unless ``ordered`` is
        False). ``on_error="collect"`` yields a failed item's exception in its place.

        ``isolate=True`` never takes the one-core shortcut: the items run in a worker process
        even with one worker, so an item that crashes its process (a decoder's segfault on a
        hostile file) fails alone instead of taking the caller down.
        """
        from allcores import backends

        # On a cluster (--backend, allcores.backend(), ALLCORES_BACKEND) there is no one-core
        # shortcut: the user asked for the cluster's machines, and this one's worker count
        # says nothing about theirs.
        local = backends.requested()[0] is None
        if local and not isolate and (self.workers == 1 or len(items) <= 1):
            return self._inline(fn, items, on_error)
        from allcores._oneliners import _guarded, _pool

        pool = _pool(self.workers)
        options = pool._options(on_error=on_error, chunksize=chunksize)
        it = pool._iter(fn, items, CALL_ONE, ordered, options)
        if it._sink.record is not None:
            self._records.append(it._sink.record)
        return _guarded(pool, it, None)

    def _inline(self, fn: Callable[[Any], Any], items: Sequence[Any],
                on_error: str) -> Iterator[Any]:
        """The one-core shortcut, timed item by item as worker 0 so its report is honest."""
        from allcores._engine.client import function_name
        from allcores._engine.worker_main import rss_bytes

        record = CallRecord(next(_inline_ids), function_name(fn), 1)
        self._records.append(record)
        clock = time.monotonic
        try:
            for item in items:
                started = clock()
                cpu = time.process_time()
                try:
                    value = fn(item)
                except Exception as exc:
                    if on_error != "collect":
                        raise
                    value = exc
                ended = clock()
                record.spans.append(Span(0, record.job, started, ended, 1, ended - started,
                                         0.0, 0.0, 1, 0, time.process_time() - cpu))
                yield value
        finally:
            record.ended = clock()
            if record.spans:
                last = record.spans[-1]
                record.spans[-1] = last._replace(rss=rss_bytes())

    # -- progress -----------------------------------------------------------------------------

    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        """Move the progress bar by ``n`` (a no-op without a bar); ``postfix``: its status."""
        bar = self._bar
        if bar is None:
            return
        if postfix is not None and hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(postfix, refresh=False)
        bar.update(n)

    # -- the end ------------------------------------------------------------------------------

    @property
    def stats(self) -> Any:
        """A :class:`allcores.RunStats` over every call of the run (so far, while it runs)."""
        if self._stats is not None:
            return self._stats
        from allcores._stats import calls_stats

        stats = calls_stats(self._records, self.workers, self.tool)
        if self._closed:
            self._stats = stats
        return stats

    def close(self) -> None:
        """Close the progress bar and write the report (once)."""
        if self._closed:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._closed = True
        if self._report is not None:
            from allcores._report import report

            report(self.stats, self._report, title=f"allcores {self.tool}")

    def __enter__(self) -> BatchRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is KeyboardInterrupt:  # interrupted: close the bar, write no report
            self._report = None
        if exc_type is None:
            self.close()
            return
        try:  # the run failed: its report is still worth having, but never hides the error
            self.close()
        except Exception:
            pass
