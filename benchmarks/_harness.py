"""Shared timing helpers for the scripts in ``benchmarks/``.

Every benchmark follows the same method (see ../shared/benchmarks.md): all systems side by side
in ONE run, one warm-up, then N timed rounds (``--rounds``, default 3), the median reported with
its spread, and ratios computed inside the run against a baseline measured in that same run. The
machine is shared and noisy, so absolute seconds drift from run to run; ratios hold.

    from _harness import measure, render_table, machine_info

    timing = measure(lambda: pool.map(f, items), rounds=3)
    print(timing.median, timing.spread_pct)
    print(render_table({"W1": {"serial": t0, "mp.Pool": t1}}, baseline="serial"))

A system that raises is recorded, not fatal: its cell shows the error, so the peers still get
measured while a system (for example allcores before its engine lands) is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: When the warm-up alone takes longer than this, a system is timed for one round only, so that
#: a slow peer (ProcessPoolExecutor.map over 200,000 tiny tasks takes ~25 s) cannot stretch the
#: whole run to many minutes. Its cell says "1 round".
LONG_ROUND_S = 10.0

#: Longest error text kept in a table cell; the JSON keeps the full text.
CELL_ERROR_CHARS = 60


@dataclass(frozen=True)
class Timing:
    """The timed rounds of one system on one workload."""

    times: tuple[float, ...] = ()
    """Wall-clock seconds of each timed round (warm-up excluded)."""
    warmup_s: float | None = None
    """Wall-clock seconds of the warm-up round, or None when there was none."""
    error: str | None = None
    """``"TypeName: message"`` when the system raised or returned a wrong result."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form numbers a benchmark wants to keep (items/s, calibration...)."""

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def spread(self) -> float:
        """max - min over the timed rounds, in seconds."""
        return (max(self.times) - min(self.times)) if self.times else float("nan")

    @property
    def spread_pct(self) -> float:
        """The spread as a percentage of the median."""
        med = self.median
        return 100.0 * self.spread / med if self.times and med > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["times"] = list(self.times)
        data["median"] = self.median if self.ok else None
        data["spread"] = self.spread if self.ok else None
        return data


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def measure(
    fn: Callable[[], Any],
    *,
    rounds: int = 3,
    warmup: bool = True,
    check: Callable[[Any], None] | None = None,
    long_round_s: float = LONG_ROUND_S,
) -> Timing:
    """Run ``fn`` once to warm up, then ``rounds`` timed times; never raises for ``fn``'s errors.

    ``check(result)`` may raise (AssertionError or anything) to flag a wrong result; it is run on
    the warm-up result (or the first timed one) and is not timed. When the warm-up takes longer
    than ``long_round_s``, only one timed round is run.

        >>> t = measure(lambda: sum(range(1000)), rounds=3)
        >>> len(t.times), t.ok
        (3, True)
    """
    warm: float | None = None
    checked = check is None
    try:
        if warmup:
            t0 = time.perf_counter()
            result = fn()
            warm = time.perf_counter() - t0
            if check is not None:
                check(result)
                checked = True
            if warm > long_round_s:
                rounds = 1
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
            if not checked and check is not None:
                check(result)
                checked = True
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a peer may raise anything, SystemExit included
        return Timing(warmup_s=warm, error=_describe(exc))
    return Timing(times=tuple(times), warmup_s=warm)


def format_seconds(seconds: float) -> str:
    """Seconds in the unit that reads best: ``'850 us'``, ``'24 ms'``, ``'2.31 s'``."""
    if seconds != seconds:  # NaN
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


def _cell_time(t: Timing | None) -> str:
    if t is None:
        return "-"
    if not t.ok:
        err = (t.error or "no result")[:CELL_ERROR_CHARS]
        return f"error: {err}".replace("|", "/")
    text = format_seconds(t.median)
    if len(t.times) > 1:
        text += f" ±{t.spread_pct:.0f}%"
    else:
        text += " (1 round)"
    return text


def ratio(results: Mapping[str, Timing], num: str, den: str) -> float | None:
    """``results[num].median / results[den].median``, or None when either is missing or broken.

    With ``num`` the slower reference, this is "how many times faster ``den`` is".
    """
    a, b = results.get(num), results.get(den)
    if a is None or b is None or not a.ok or not b.ok or b.median <= 0:
        return None
    return a.median / b.median


def render_table(
    results: Mapping[str, Mapping[str, Timing]],
    *,
    systems: Iterable[str],
    workloads: Iterable[str] | None = None,
    baseline: str | None = None,
    title_col: str = "system",
) -> str:
    """A markdown table, one row per system and one column per workload.

    Each cell is the median time with its spread; when ``baseline`` names a system, the cell
    also shows ``baseline_time / system_time`` (above 1 = faster than the baseline).
    """
    systems = list(systems)
    workloads = list(workloads) if workloads is not None else list(results)
    lines = [
        "| " + " | ".join([title_col, *workloads]) + " |",
        "|" + "---|" * (len(workloads) + 1),
    ]
    for system in systems:
        cells = [system]
        for w in workloads:
            row = results.get(w, {})
            t = row.get(system)
            cell = _cell_time(t)
            if baseline is not None and t is not None and t.ok and system != baseline:
                r = ratio(row, baseline, system)
                if r is not None:
                    cell += f" ({r:.2f}x)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_ratio_table(
    results: Mapping[str, Mapping[str, Timing]],
    *,
    pairs: Iterable[tuple[str, str, str]],
    workloads: Iterable[str] | None = None,
) -> str:
    """Rows of ``(label, reference, system)``: reference_time / system_time per workload."""
    workloads = list(workloads) if workloads is not None else list(results)
    lines = [
        "| " + " | ".join(["ratio", *workloads]) + " |",
        "|" + "---|" * (len(workloads) + 1),
    ]
    for label, ref, system in pairs:
        cells = [label]
        for w in workloads:
            r = ratio(results.get(w, {}), ref, system)
            cells.append("-" if r is None else f"{r:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, Python, memory, OS."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    mem = _mem_total_gib()
    return {
        "cpu": _cpu_model(),
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "memory_gib": round(mem, 1) if mem is not None else None,
        "os": f"{platform.system()} {platform.release()}",
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def machine_line(info: Mapping[str, Any] | None = None) -> str:
    """One line for the top of a report: ``Machine: AMD EPYC, 2 cores, 23.5 GiB, Python 3.11``."""
    info = machine_info() if info is None else info
    return (
        f"Machine: {info['cpu']}, {info['nproc']} usable cores (of {info['cpu_count']}), "
        f"{info['memory_gib']} GiB RAM, {info['implementation']} {info['python']}, "
        f"{info['os']}, load average {info['load_avg']}"
    )


def add_common_args(parser: argparse.ArgumentParser, *, rounds: int = 3) -> None:
    """``--rounds``, ``--json``, ``--only`` and ``--systems``, the same in every script."""
    parser.add_argument("--rounds", type=int, default=rounds, help="timed rounds per cell")
    parser.add_argument("--json", metavar="PATH", help="also write all numbers to this file")
    parser.add_argument("--only", metavar="IDS", help="comma-separated workload ids to run")
    parser.add_argument("--systems", metavar="NAMES", help="comma-separated systems to run")


def pick(requested: str | None, available: Iterable[str], what: str) -> list[str]:
    """Parse a ``--only``/``--systems`` value against the known names (case-insensitive)."""
    available = list(available)
    if not requested:
        return available
    by_lower = {name.lower(): name for name in available}
    chosen = []
    for name in requested.split(","):
        name = name.strip()
        if not name:
            continue
        if name.lower() not in by_lower:
            sys.exit(f"unknown {what} {name!r}; choose from: {', '.join(available)}")
        chosen.append(by_lower[name.lower()])
    return chosen


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (Timing objects allowed anywhere inside) as indented JSON."""

    def default(obj: Any) -> Any:
        if isinstance(obj, Timing):
            return obj.to_json()
        raise TypeError(f"cannot write {type(obj).__name__} to JSON")

    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2, default=default)
        fh.write("\n")
