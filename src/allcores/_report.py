"""``allcores.report``: one self-contained HTML file that shows where a run's time went.

A renderer over :class:`allcores.RunStats`: a summary table and a plain-language verdict in
plain HTML, then Bokeh plots (the library Dask's performance report uses): a timeline with one
lane per worker (hover a chunk for its items, duration and function; crashes, timeouts, retries,
recycled and started workers marked), the utilisation of the workers over time, and the chunk
sizes the scheduler chose over time.

Everything is inline: Bokeh's JavaScript is embedded (only its core bundle, ~1.3 MB, not the
widget, table and MathJax bundles the plots do not use), so the file opens offline and fetches
nothing. Bokeh is imported only here, when a report is written, so ``import allcores`` stays
light. Above ``REPORT_MAX_SPANS`` chunks, neighbouring chunks of one worker are merged into
time buckets (their sums kept) so that a 200,000-chunk run still opens in about a second.
"""

from __future__ import annotations

import html
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from allcores._stats import RunStats, _seconds, merged_spans

__all__ = ["report"]

# Chunks drawn one by one at most; past that they are merged into time buckets per worker.
REPORT_MAX_SPANS = 20_000
# Bins of the utilisation curve.
UTILISATION_BINS = 200
_INSTALL_HINT = "the HTML report needs Bokeh: pip install 'allcores[report]'"

# How each incident is drawn on the timeline: (marker, colour, label).
_MARKERS = {
    "crash": ("x", "#d62728", "crash"),
    "timeout": ("triangle", "#ff7f0e", "timeout"),
    "retry": ("circle", "#bcbd22", "retry"),
    "recycle": ("diamond", "#1f77b4", "recycled"),
    "start": ("dash", "#2ca02c", "worker started"),
}
_PALETTE = ("#4c78a8", "#72b7b2", "#54a24b", "#b279a2", "#9d755d", "#e45756", "#f58518")


def report(stats: RunStats, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write an HTML report of ``stats`` to ``path`` and return the path.

    The file is self-contained (no network access when opened) and is written atomically: a
    reader never sees half a report. ``title`` names the run in the heading (default: the
    task function).

    >>> import allcores
    >>> results = allcores.map(abs, range(1000), workers=2)
    >>> allcores.report(results.stats, "run.html")  # doctest: +SKIP
    PosixPath('run.html')
    """
    if not isinstance(stats, RunStats):
        raise TypeError(
            f"report() takes the RunStats of a run (MapResults.stats, pool.statistics()), "
            f"got {type(stats).__name__}"
        )
    target = check_path(path)
    text = render(stats, title)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def check_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if a report can be written there, else a clear error (also when
    Bokeh is missing): tools check before their run, not after it."""
    target = Path(os.fspath(path))
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory: give the report a file name, "
                                "e.g. run.html")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write the report to {target}: the directory "
                                f"{target.parent} does not exist")
    if importlib.util.find_spec("bokeh") is None:
        raise ImportError(_INSTALL_HINT)
    return target


def render(stats: RunStats, title: str | None = None) -> str:
    """The report as one HTML string; ``title`` names the run (default: its function)."""
    try:
        from bokeh.embed import components
        from bokeh.layouts import column
        from bokeh.resources import Resources
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc

    timeline = _timeline(stats)
    others = [_utilisation(stats), _chunk_sizes(stats)]
    for fig in others:
        fig.x_range = timeline.x_range  # zooming one zooms all: they share a time axis
    plots = column(timeline, *others, sizing_mode="stretch_width")
    script, div = components(plots)
    resources = Resources(mode="inline", components=["bokeh"])
    title = f"allcores run report: {title or stats.function or stats.scope}"
    return _PAGE.format(
        title=html.escape(title),
        resources=resources.render_js(),
        style=_STYLE,
        heading=html.escape(title),
        when=html.escape(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stats.started))),
        verdict=html.escape(stats.verdict()),
        summary=_summary_table(stats),
        workers=_worker_table(stats),
        merged=_merged_note(stats),
        plots=div,
        script=script,
    )


# -- the HTML around the plots -----------------------------------------------------------------


def _summary_table(st: RunStats) -> str:
    rows = [
        ("Wall time", _seconds(st.wall_seconds)),
        ("Workers", str(st.workers)),
        ("Items", f"{st.items:,}"),
        ("Chunks", f"{st.chunks:,}"),
        ("Items per second", f"{st.items_per_second:,.0f}"),
        ("Speedup (busy time / wall time)", f"{st.speedup:.2f}"),
        ("Time in the task function", f"{st.efficiency:.1%}"),
        ("CPU time while in the task", _cpu_share(st)),
        ("Lost to start-up", f"{st.losses.startup:.1%}"),
        ("Lost to the tail (imbalance)", f"{st.losses.tail:.1%}"),
        ("Lost to transfer (pickling, IPC)", f"{st.losses.transfer:.1%}"),
        ("Lost to idling", f"{st.losses.idle:.1%}"),
        ("Pickling arguments in the caller", _seconds(st.pickle_seconds)),
        ("Retries", str(st.retries)),
        ("Crashes", str(st.crashes)),
        ("Timeouts", str(st.timeouts)),
        ("Recycled workers", str(st.recycled)),
        ("Peak worker memory", f"{st.peak_rss / 2**20:.0f} MiB"),
    ]
    body = "".join(
        f'<tr data-figure="{html.escape(k)}"><th>{html.escape(k)}</th><td>{html.escape(v)}</td>'
        "</tr>"
        for k, v in rows
    )
    return f'<table id="summary">{body}</table>'


def _cpu_share(st: RunStats) -> str:
    if not st.busy_seconds:
        return "-"
    return f"{_seconds(st.cpu_seconds)} ({st.cpu_seconds / st.busy_seconds:.0%})"


def _worker_table(st: RunStats) -> str:
    head = ("Worker", "Tasks", "Chunks", "Busy", "CPU", "Transfer", "Start-up", "Tail", "Idle",
            "Peak memory", "Starts", "Crashes", "Timeouts", "Recycled")
    rows = []
    for w in st.per_worker:
        cells = (
            str(w.worker), f"{w.tasks:,}", f"{w.chunks:,}", _seconds(w.busy_seconds),
            _seconds(w.cpu_seconds), _seconds(w.transfer_seconds), _seconds(w.startup_seconds),
            _seconds(w.tail_seconds),
            _seconds(w.idle_seconds), f"{w.peak_rss / 2**20:.0f} MiB", str(w.starts),
            str(w.crashes), str(w.timeouts), str(w.recycled),
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f'<table id="workers"><tr>{header}</tr>{"".join(rows)}</table>'


def _merged_note(st: RunStats) -> str:
    if len(st.spans) <= REPORT_MAX_SPANS and all(s.chunks == 1 for s in st.spans):
        return ""
    return (
        "<p class='note'>Too many chunks to draw one by one: neighbouring chunks of a worker "
        "are merged into time buckets (hover shows how many); every total is exact.</p>"
    )


# -- the plots ---------------------------------------------------------------------------------


def _lane(worker: int) -> str:
    return f"worker {worker}"


def _timeline(st: RunStats) -> Any:
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Range1d
    from bokeh.models.annotations import Legend, LegendItem
    from bokeh.plotting import figure

    lanes = [_lane(w.worker) for w in st.per_worker]
    names = dict(st.functions)
    spans = merged_spans(st.spans, REPORT_MAX_SPANS)
    jobs = sorted({s.job for s in spans})
    colour = {job: _PALETTE[i % len(_PALETTE)] for i, job in enumerate(jobs)}
    import numpy as np  # Bokeh depends on numpy; arrays travel as compact binary, not JSON

    names_of = [names.get(s.job, "") for s in spans]
    source = ColumnDataSource({
        "lane": [_lane(s.worker) for s in spans],
        "left": np.array([s.start for s in spans]),
        "right": np.array([max(s.end, s.start + 1e-6) for s in spans]),
        "items": np.array([s.items for s in spans], dtype=np.int64),
        "chunks": np.array([s.chunks for s in spans], dtype=np.int64),
        "duration_ms": np.array([(s.end - s.start) * 1e3 for s in spans]),
        "busy_ms": np.array([s.busy * 1e3 for s in spans]),
        "function": names_of,
        "colour": [colour[s.job] for s in spans],
        "alpha": np.array([0.9 if s.chunks == 1 else 0.55 for s in spans]),
    })
    fig = figure(
        name="timeline",
        title="Timeline: one lane per worker, one bar per chunk",
        y_range=FactorRange(factors=list(reversed(lanes))),
        x_range=Range1d(start=0, end=max(st.wall_seconds, 1e-6)),
        height=max(160, 60 + 40 * len(lanes)),
        sizing_mode="stretch_width",
        x_axis_label="seconds from the start",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
        output_backend="canvas",
    )
    bars = fig.hbar(y="lane", left="left", right="right", height=0.7, source=source,
                    fill_color="colour", line_color=None, fill_alpha="alpha", name="chunks")
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[
        ("worker", "@lane"), ("function", "@function"), ("items", "@items"),
        ("chunks", "@chunks"), ("duration", "@duration_ms{0.000} ms"),
        ("in the task", "@busy_ms{0.000} ms"),
    ]))
    items = []
    for kind, (marker, col, label) in _MARKERS.items():
        events = [e for e in st.incidents if e.kind == kind and e.worker is not None]
        if kind == "retry":  # a retry is the item's, not a worker's: draw it on every lane
            events = [e for e in st.incidents if e.kind == kind]
        if not events:
            continue
        marks = ColumnDataSource({
            "x": [e.time for e in events],
            "lane": [_lane(e.worker) if e.worker is not None else lanes[0] for e in events],
            "detail": [e.detail for e in events],
            "kind": [label] * len(events),
        })
        glyph: Any = fig.scatter(x="x", y="lane", source=marks, marker=marker, size=14,
                            line_color=col, fill_color=col, line_width=2, name=kind)
        fig.add_tools(HoverTool(renderers=[glyph], tooltips=[("", "@kind"), ("", "@detail")]))
        items.append(LegendItem(label=label, renderers=[glyph]))
    if items:
        fig.add_layout(Legend(items=items, location="top_left", orientation="horizontal"),
                       "above")
    fig.ygrid.grid_line_color = None
    return fig


def _utilisation(st: RunStats) -> Any:
    from bokeh.models import HoverTool, Range1d
    from bokeh.plotting import figure

    bins = UTILISATION_BINS
    wall = max(st.wall_seconds, 1e-9)
    width = wall / bins
    busy = [0.0] * bins
    for s in st.spans:
        length = s.end - s.start
        if length <= 0:
            busy[min(bins - 1, max(0, int(s.start / width)))] += s.busy
            continue
        rate = s.busy / length  # a bucket of merged chunks was busy for part of its span
        first = max(0, int(s.start / width))
        last = min(bins - 1, int(s.end / width))
        for b in range(first, last + 1):
            overlap = min(s.end, (b + 1) * width) - max(s.start, b * width)
            if overlap > 0:
                busy[b] += overlap * rate
    capacity = width * max(1, st.workers)
    share = [min(1.0, x / capacity) * 100 for x in busy]
    xs = [(b + 0.5) * width for b in range(bins)]
    fig = figure(name="utilisation", title="Utilisation: share of the workers in the task",
                 height=200, sizing_mode="stretch_width", x_axis_label="seconds from the start",
                 y_axis_label="% busy", y_range=Range1d(start=0, end=105),
                 tools="xpan,xwheel_zoom,reset,save")
    fig.varea(x=xs, y1=[0.0] * bins, y2=share, fill_color="#4c78a8", fill_alpha=0.5)
    curve = fig.line(x=xs, y=share, line_color="#4c78a8", line_width=2)
    fig.add_tools(HoverTool(renderers=[curve], tooltips=[("t", "@x{0.000} s"),
                                                         ("busy", "@y{0.0} %")]))
    return fig


def _chunk_sizes(st: RunStats) -> Any:
    from bokeh.models import HoverTool
    from bokeh.plotting import figure

    spans = merged_spans(st.spans, REPORT_MAX_SPANS)
    xs = [s.start for s in spans]
    ys = [max(1.0, s.items / max(1, s.chunks)) for s in spans]
    # A log axis only where sizes span orders of magnitude (its ticks crowd a narrow range).
    log = bool(ys) and max(ys) / min(ys) > 100
    fig = figure(name="chunk_sizes", title="Chunk sizes the scheduler chose",
                 height=200, sizing_mode="stretch_width", x_axis_label="seconds from the start",
                 y_axis_label="items per chunk", y_axis_type="log" if log else "linear",
                 tools="xpan,xwheel_zoom,reset,save")
    dots = fig.scatter(x=xs, y=ys, size=5, fill_alpha=0.6, line_color=None)
    fig.add_tools(HoverTool(renderers=[dots], tooltips=[("t", "@x{0.000} s"),
                                                        ("items", "@y{0}")]))
    return fig


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
.when { color: #666; margin-top: 0; }
#verdict { background: #f3f6fa; border-left: 4px solid #4c78a8; padding: 0.7em 1em;
           max-width: 70em; line-height: 1.45; }
.tables { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #e3e3e3; text-align: right; }
#summary th { text-align: left; font-weight: normal; color: #444; }
#workers th { background: #f3f3f3; }
.note { color: #666; font-size: 0.9em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{style}</style>
{resources}
</head>
<body>
<h1>{heading}</h1>
<p class="when">started {when}</p>
<p id="verdict">{verdict}</p>
<div class="tables">{summary}{workers}</div>
{merged}
{plots}
{script}
</body>
</html>
"""
