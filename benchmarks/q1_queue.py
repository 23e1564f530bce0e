"""Q1: a queue between processes, allcores.Queue beside multiprocessing.Queue in ONE run.

    python benchmarks/q1_queue.py                     # 1 million items, 3 rounds
    python benchmarks/q1_queue.py --items 20000 --rounds 1     # smoke test

Workloads (../shared/benchmarks.md, Q1): small tuples ``(producer, seq, 1.5)`` pass from
producer processes to one consumer process.
  1p1c   1 producer, 1 consumer, ``--items`` items
  4p1c   4 producers, 1 consumer, ``--items`` items in all

Systems:
  mp.Queue         multiprocessing.Queue(), put() / get() one item at a time
  allcores         allcores.Queue(), put() / get() one item at a time (the drop-in use)
  allcores-bulk    allcores.Queue(), put_many() / get_many() in lists of 1000

Timing: the processes are started (fork) and wait on a barrier; the clock runs from the
barrier's release until the consumer has received every item; process start-up is excluded
for every system alike. The consumer checks the count and that each producer's items arrived
in order. One warm-up round, then ``--rounds`` timed rounds; medians; ratios in this run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402
import allcores  # noqa: E402
from _harness import Timing  # noqa: E402

BULK = 1000
#: No round may take longer than this (a hung system must not stall the others).
ROUND_TIMEOUT_S = 300
SCENARIOS = {"1p1c": 1, "4p1c": 4}
SYSTEMS = ("mp.Queue", "allcores", "allcores-bulk")


def _produce(q: Any, pid: int, n: int, bulk: bool, barrier: Any) -> None:
    barrier.wait()
    if bulk:
        for start in range(0, n, BULK):
            q.put_many([(pid, i, 1.5) for i in range(start, min(n, start + BULK))])
        q.flush()
    else:
        put = q.put
        for i in range(n):
            put((pid, i, 1.5))
    if hasattr(q, "close"):
        q.close()
    if hasattr(q, "join_thread"):
        q.join_thread()


def _consume(q: Any, total: int, producers: int, bulk: bool, barrier: Any, done: Any) -> None:
    last = [-1] * producers
    got = 0
    in_order = True
    barrier.wait()
    if bulk:
        while got < total:
            for pid, i, _ in q.get_many(BULK):
                in_order &= i == last[pid] + 1
                last[pid] = i
                got += 1
    else:
        get = q.get
        for _ in range(total):
            pid, i, _ = get()
            in_order &= i == last[pid] + 1
            last[pid] = i
            got += 1
    done.send((time.perf_counter(), got, in_order))


def one_round(system: str, producers: int, items: int) -> float:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue() if system == "mp.Queue" else allcores.Queue()
    bulk = system == "allcores-bulk"
    barrier = ctx.Barrier(producers + 2)
    recv_end, send_end = ctx.Pipe(duplex=False)
    per = [items // producers + (1 if p < items % producers else 0) for p in range(producers)]
    procs = [ctx.Process(target=_produce, args=(q, p, per[p], bulk, barrier))
             for p in range(producers)]
    procs.append(ctx.Process(target=_consume,
                             args=(q, items, producers, bulk, barrier, send_end)))
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=ROUND_TIMEOUT_S)
        t0 = time.perf_counter()
        if not recv_end.poll(ROUND_TIMEOUT_S):
            raise TimeoutError(f"{system}: no result in {ROUND_TIMEOUT_S} s")
        t_end, got, in_order = recv_end.recv()
        if got != items or not in_order:
            raise AssertionError(f"{system}: got {got} of {items} items, in order: {in_order}")
        for p in procs:
            p.join(ROUND_TIMEOUT_S)
        return t_end - t0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        if hasattr(q, "close") and system != "mp.Queue":
            q.close()


def measure_system(system: str, producers: int, items: int, rounds: int) -> Timing:
    try:
        warm = one_round(system, producers, items)
        times = tuple(one_round(system, producers, items) for _ in range(rounds))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return Timing(error=f"{type(exc).__name__}: {exc}")
    return Timing(times=times, warmup_s=warm,
                  extra={"items_per_s": items / (sorted(times)[len(times) // 2])})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="items per round")
    _harness.add_common_args(parser)
    args = parser.parse_args(argv)
    scenarios = _harness.pick(args.only, SCENARIOS, "scenario")
    systems = _harness.pick(args.systems, SYSTEMS, "system")
    print(_harness.machine_line())
    print(f"Q1: {args.items:,} small tuples per round, {args.rounds} rounds, medians\n")
    results: dict[str, dict[str, Timing]] = {}
    for sc in scenarios:
        results[sc] = {}
        for system in systems:
            t = measure_system(system, SCENARIOS[sc], args.items, args.rounds)
            results[sc][system] = t
            rate = f"{t.extra['items_per_s'] / 1e3:,.0f}k items/s" if t.ok else t.error
            print(f"  {sc:5} {system:14} {rate}", flush=True)
    print()
    print(_harness.render_table(results, systems=systems, workloads=scenarios,
                                baseline="mp.Queue"))
    print()
    for sc in scenarios:
        r = _harness.ratio(results[sc], "mp.Queue", "allcores")
        verdict = "n/a" if r is None else ("PASS" if r >= 3.0 else "FAIL")
        shown = "-" if r is None else f"{r:.2f}x"
        print(f"{sc}: allcores.Queue put/get vs multiprocessing.Queue = {shown} "
              f"(bar: >= 3x) {verdict}")
    if args.json:
        _harness.write_json(args.json, {"machine": _harness.machine_info(), "items": args.items,
                                        "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
