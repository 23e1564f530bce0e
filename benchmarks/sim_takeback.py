"""Taking a queued chunk back (docs/design.md, heavy tails), measured in the simulation.

    python benchmarks/sim_takeback.py                 # W3, 200 seeds, 4 latencies (~5 s)
    python benchmarks/sim_takeback.py --seeds 500 --latencies 0.1,0.2
    python benchmarks/sim_takeback.py --chunk-overhead 0.3     # each chunk costs 0.3 ms of CPU

No process is started: this plays W3's durations (``workloads.skewed_durations_ms``) on 2
simulated workers with ``tests/_simulation.py``, which drives the real pure scheduling code,
once as the engine runs (a chunk waiting unstarted in a busy worker's pipe can be taken back,
so one small chunk may wait there until the very end of a heavy tail) and once without taking
back (``take_back=False``: then the end of a heavy tail sends chunks to idle workers only).

It prints, per latency (one way), the mean and worst speedup over the seeds, and the worst
ratio to one item at a time to the first idle worker with no overhead (the ideal for a
scheduler that has not seen the items; ``tests/test_simulation.py`` asks >= 0.97 of it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from _simulation import one_at_a_time, simulate  # noqa: E402
from workloads import skewed_durations_ms  # noqa: E402

WORKERS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="W3 seeds 1..N")
    parser.add_argument("--latencies", default="0.1,0.2,0.5,1",
                        help="one-way latencies in milliseconds, comma-separated")
    parser.add_argument("--chunk-overhead", type=float, default=0.0, metavar="MS",
                        help="CPU each chunk costs a worker on top of its items, in ms (the "
                             "manager's loop runs on the workers' cores: about 0.3 ms on 2)")
    args = parser.parse_args()
    maps = [[ms / 1e3 for ms in skewed_durations_ms(seed)] for seed in range(1, args.seeds + 1)]
    ideal = [one_at_a_time(costs, WORKERS) for costs in maps]
    print(f"W3 over seeds 1-{args.seeds}, {WORKERS} workers, {args.chunk_overhead} ms of CPU per "
          "chunk; mean / worst speedup, and the worst ratio to one item at a time with no "
          "overhead")
    print("| one-way latency | without taking back | with taking back (the engine) |")
    print("|---|---|---|")
    for text in args.latencies.split(","):
        latency = float(text) / 1e3
        cells = []
        for take_back in (False, True):
            speedups = [simulate(costs, WORKERS, latency=latency, take_back=take_back,
                                 chunk_overhead=args.chunk_overhead / 1e3).speedup
                        for costs in maps]
            worst_ratio = min(s / i for s, i in zip(speedups, ideal, strict=True))
            cells.append(f"{statistics.mean(speedups):.3f}x / {min(speedups):.3f}x "
                         f"({worst_ratio:.3f})")
        print(f"| {text} ms | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
