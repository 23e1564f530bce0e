"""Issue 3's chaos run: a 10,000-task map while another thread SIGKILLs a random worker every
200 ms. Without retries every item must end with its value or a WorkerCrashedError; with
retries=3 every item must have its value. Prints one line per setting.

    python benchmarks/chaos.py [--tasks 10000] [--period 0.2]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time

import allcores
from allcores.errors import WorkerCrashedError


def work(x: int) -> int:
    s = 0
    for i in range(20_000 + x % 10_000):  # ~1-1.5 ms of pure Python
        s = (s + i * i) % 1000003
    return s


def run(tasks: int, period: float, retries: int) -> str:
    stop = threading.Event()
    kills = 0
    rnd = random.Random(retries)
    with allcores.Pool(2, retries=retries) as pool:

        def killer() -> None:
            nonlocal kills
            while not stop.wait(period):
                pids = pool.worker_pids()
                if pids:
                    try:
                        os.kill(rnd.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass

        thread = threading.Thread(target=killer)
        thread.start()
        started = time.perf_counter()
        try:
            results = pool.map(work, range(tasks), on_error="collect")
        finally:
            stop.set()
            thread.join()
        seconds = time.perf_counter() - started
    expected = [work(x) for x in range(tasks)]
    crashed = sum(isinstance(r, WorkerCrashedError) for r in results)
    right = sum(r == e for r, e in zip(results, expected))
    other = tasks - crashed - right
    verdict = "PASS" if other == 0 and (retries == 0 or right == tasks) else "FAIL"
    return (
        f"{verdict} retries={retries}: {tasks} tasks in {seconds:.1f} s, {kills} workers killed; "
        f"{right} values, {crashed} WorkerCrashedError, {other} wrong or missing"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--period", type=float, default=0.2)
    args = parser.parse_args()
    for retries in (0, 3):
        print(run(args.tasks, args.period, retries), flush=True)


if __name__ == "__main__":
    main()
