"""A1 and A2: tiny tasks submitted one by one, the standard pools and allcores in ONE run.

    python benchmarks/apply_async.py [--tasks 5000] [--rounds 7] [--json bench-out/apply.json]

A1: ``pool.apply_async(f, (i,))`` 5,000 times, then ``.get()`` on each, ``f(x) = x + 1``:
multiprocessing.Pool against allcores.Pool. A2: ``executor.submit(f, i)`` 5,000 times, drained
with ``concurrent.futures.as_completed``: ProcessPoolExecutor against allcores.Executor. 2
workers, fork, every pool created and warmed up before timing; the rounds are interleaved (each
round runs every system once), so a noisy neighbour slows all of them alike; medians.

Besides the time per task, the table shows the longest single ``apply_async``/``submit`` call of
the median round: the caller must never be blocked for long while it submits.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402
import allcores  # noqa: E402

WORKERS = 2
#: The issue's bars: A1 at least mp.Pool's speed, A2 at least 3x ProcessPoolExecutor's.
A1_BAR, A2_BAR = 1.0, 3.0


def inc(x: int) -> int:
    return x + 1


def run_apply(pool: Any, n: int) -> tuple[list[int], float]:
    longest = 0.0
    results = []
    clock = time.perf_counter
    for i in range(n):
        started = clock()
        results.append(pool.apply_async(inc, (i,)))
        longest = max(longest, clock() - started)
    return [r.get() for r in results], longest


def run_submit(executor: Any, n: int) -> tuple[list[int], float]:
    longest = 0.0
    futures = []
    clock = time.perf_counter
    for i in range(n):
        started = clock()
        futures.append(executor.submit(inc, i))
        longest = max(longest, clock() - started)
    return sorted(f.result() for f in as_completed(futures)), longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", metavar="PATH", help="also write all numbers to this file")
    args = parser.parse_args()
    n = args.tasks
    fork = multiprocessing.get_context("fork")
    pools: dict[str, Any] = {
        "mp.Pool": fork.Pool(WORKERS),
        "allcores.Pool": allcores.Pool(WORKERS),
        "PPE": ProcessPoolExecutor(WORKERS, mp_context=fork),
        "allcores.Executor": allcores.Executor(WORKERS),
    }
    runs: dict[str, tuple[str, Callable[[Any, int], tuple[list[int], float]]]] = {
        "mp.Pool": ("A1", run_apply),
        "allcores.Pool": ("A1", run_apply),
        "PPE": ("A2", run_submit),
        "allcores.Executor": ("A2", run_submit),
    }
    expected = [i + 1 for i in range(n)]
    times: dict[str, list[float]] = {name: [] for name in pools}
    longest: dict[str, list[float]] = {name: [] for name in pools}
    print(_harness.machine_line())
    try:
        for name, pool in pools.items():  # warm-up; the results are right
            out, _ = runs[name][1](pool, n)
            assert out == expected, name
        for _ in range(args.rounds):
            for name, pool in pools.items():
                started = time.perf_counter()
                _, worst = runs[name][1](pool, n)
                times[name].append(time.perf_counter() - started)
                longest[name].append(worst)
    finally:
        for name, pool in pools.items():
            if hasattr(pool, "terminate"):
                pool.terminate()
            else:
                pool.shutdown(wait=True)

    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {
        "A1": medians["mp.Pool"] / medians["allcores.Pool"],
        "A2": medians["PPE"] / medians["allcores.Executor"],
    }
    print(f"\n{n:_} tiny tasks, {WORKERS} workers, {args.rounds} rounds (median):\n")
    print("| workload | system | time | per task | longest submit call | vs the standard pool |")
    print("|---|---|---|---|---|---|")
    for name in pools:
        workload = runs[name][0]
        ratio = "1.00x" if name in ("mp.Pool", "PPE") else f"**{ratios[workload]:.2f}x**"
        print(
            f"| {workload} | {name} | {_harness.format_seconds(medians[name])} | "
            f"{medians[name] / n * 1e6:.0f} us | "
            f"{_harness.format_seconds(statistics.median(longest[name]))} | {ratio} |"
        )
    print()
    print(f"bar A1 (allcores.Pool >= {A1_BAR}x mp.Pool): "
          f"{'PASS' if ratios['A1'] >= A1_BAR else 'FAIL'} ({ratios['A1']:.2f}x)")
    print(f"bar A2 (allcores.Executor >= {A2_BAR}x PPE): "
          f"{'PASS' if ratios['A2'] >= A2_BAR else 'FAIL'} ({ratios['A2']:.2f}x)")
    if args.json:
        _harness.write_json(args.json, {
            "machine": _harness.machine_info(),
            "tasks": n,
            "rounds": args.rounds,
            "times": times,
            "longest_submit": longest,
            "medians": medians,
            "ratios": ratios,
        })


if __name__ == "__main__":
    main()
