"""apply_async / submit in a loop: 5,000 tiny tasks submitted one by one, then all results
collected; multiprocessing.Pool, ProcessPoolExecutor and allcores, 2 workers, in one run.

    python benchmarks/apply_async.py [--tasks 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import allcores


def inc(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.tasks
    systems = {
        "mp.Pool apply_async": (
            lambda: multiprocessing.get_context("fork").Pool(2),
            lambda p: [r.get() for r in [p.apply_async(inc, (i,)) for i in range(n)]],
        ),
        "PPE submit": (
            lambda: ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")),
            lambda p: [f.result() for f in [p.submit(inc, i) for i in range(n)]],
        ),
        "allcores.Pool apply_async": (
            lambda: allcores.Pool(2),
            lambda p: [r.get() for r in [p.apply_async(inc, (i,)) for i in range(n)]],
        ),
        "allcores.Executor submit": (
            lambda: allcores.Executor(2),
            lambda p: [f.result() for f in [p.submit(inc, i) for i in range(n)]],
        ),
    }
    medians = {}
    for name, (make, run) in systems.items():
        with make() as pool:
            assert run(pool) == [i + 1 for i in range(n)]  # warm-up, and the result is right
            times = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                run(pool)
                times.append(time.perf_counter() - started)
        medians[name] = statistics.median(times)
        print(f"  {name:28s} {medians[name] * 1e3:8.1f} ms  ({medians[name] / n * 1e6:.0f} us a task)")
    base = medians["mp.Pool apply_async"]
    for name, t in medians.items():
        print(f"  {name:28s} {base / t:5.2f}x of mp.Pool's speed")


if __name__ == "__main__":
    main()
