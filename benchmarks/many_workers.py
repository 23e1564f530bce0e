"""The manager's load at many workers, played on a small machine: W3's mix as sleeps.

    python benchmarks/many_workers.py                          # 8, 32, 64 workers, 3 rounds
    python benchmarks/many_workers.py --workers 16,128 --json bench-out/many_workers.json

One manager thread reads every answer and sends every chunk, so its time per chunk caps how
many workers a pool can keep busy. A many-core machine is not at hand, so this plays one's
dispatch load on any machine: each item *sleeps* its W3 duration (90% 1-5 ms, 6% 10-50 ms,
4% 200 ms; W3's generator with other seeds), 100 items per worker, so N workers need almost no
CPU and the load left is the pools' own. What is NOT measured here is N workers computing on N
cores (there the manager competes with them for a core only if there are fewer cores than
workers plus one); the device run of ``benchmarks/run.py`` is for that.

Per worker count, mp.Pool(N).map (fork, its default chunksize) and allcores.Pool(N).map are
timed in turn, interleaved, every pool created and warmed before timing; medians. Efficiency
is the ideal time (the sleeps shared out perfectly, ``sum / N``) over the wall time; "manager
CPU" is the parent process's CPU time over the wall time (its main thread only waits: for
allcores that is the manager thread, for mp.Pool its three handler threads).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402
import allcores  # noqa: E402
from workloads import skewed_durations_ms  # noqa: E402

ITEMS_PER_WORKER = 100
SEED_BASE = 7000  # W3's generator seeds SEED_BASE, SEED_BASE + 1, ... (none is W3's own)


def sleeps(workers: int) -> list[float]:
    """W3's mix in seconds, ``ITEMS_PER_WORKER`` items per worker."""
    items: list[float] = []
    part = 0
    while len(items) < ITEMS_PER_WORKER * workers:
        items += [ms / 1e3 for ms in skewed_durations_ms(SEED_BASE + part)]
        part += 1
    return items[: ITEMS_PER_WORKER * workers]


def timed(run: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds and the parent's CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="8,32,64", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per cell")
    parser.add_argument("--json", metavar="PATH", help="also write all numbers to this file")
    args = parser.parse_args()
    counts = [int(text) for text in args.workers.split(",")]

    print(_harness.machine_line())
    print(f"W3's mix as sleeps, {ITEMS_PER_WORKER} items per worker; {args.rounds} rounds")
    print()
    print("| workers | ideal | mp.Pool | allcores.Pool | allcores chunks | manager CPU "
          "(mp.Pool / allcores) |")
    print("|---|---|---|---|---|---|")
    results: dict[str, Any] = {}
    for workers in counts:
        items = sleeps(workers)
        ideal = sum(items) / workers
        mp_pool = multiprocessing.get_context("fork").Pool(workers)
        ac_pool = allcores.Pool(workers)
        chunks: list[int] = []
        runners: dict[str, Callable[[], Any]] = {
            "mp.Pool": lambda: mp_pool.map(time.sleep, items),
            "allcores.Pool": lambda: chunks.append(ac_pool.map(time.sleep, items).stats.chunks),
        }
        cells: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
        try:
            for run in runners.values():  # warm-up: every worker started
                run()
            chunks.clear()
            for rnd in range(args.rounds):
                order = list(runners) if rnd % 2 == 0 else list(runners)[::-1]
                for name in order:
                    cells[name].append(timed(runners[name]))
        finally:
            mp_pool.terminate()
            mp_pool.join()
            ac_pool.terminate()
        row: dict[str, Any] = {"ideal": ideal, "chunks": chunks}
        for name, samples in cells.items():
            wall = statistics.median(s[0] for s in samples)
            row[name] = {
                "wall": wall,
                "efficiency": ideal / wall,
                "parent_cpu_share": statistics.median(s[1] / s[0] for s in samples),
                "samples": samples,
            }
        results[str(workers)] = row
        mp_row, ac_row = row["mp.Pool"], row["allcores.Pool"]
        print(f"| {workers} | {ideal:.3f} s | {mp_row['wall']:.3f} s "
              f"({mp_row['efficiency']:.2f}) | **{ac_row['wall']:.3f} s "
              f"({ac_row['efficiency']:.2f})**, {mp_row['wall'] / ac_row['wall']:.2f}x mp.Pool "
              f"| {statistics.median(chunks):.0f} | {mp_row['parent_cpu_share']:.0%} / "
              f"{ac_row['parent_cpu_share']:.0%} |", flush=True)

    if args.json:
        _harness.write_json(args.json, {
            "machine": _harness.machine_info(),
            "items_per_worker": ITEMS_PER_WORKER,
            "rounds": args.rounds,
            "results": results,
        })


if __name__ == "__main__":
    main()
