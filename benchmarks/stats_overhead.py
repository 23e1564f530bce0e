"""What recording the run statistics costs: W1 (200,000 tiny tasks) with recording on and off.

Statistics are always on; what can be switched off is the manager's recording (the workers'
two clock reads per chunk stay: they replaced two reads the scheduler already made). One pool of
2 workers runs the workload with its recorder attached and detached in alternating order, round
after round, after a warm-up; the medians are compared in the same run (the machine is shared,
so only ratios hold). One pool for both keeps the comparison free of which pool's workers got
the quieter cores (two pools differed by +-25% here, either way).

Also measured: 2,000 ``apply_async`` calls (one job and one chunk each, where per-chunk work
weighs most), and the time to build ``MapResults.stats`` on first access (lazy: a call that
never reads it never pays it).

    .venv/bin/python benchmarks/stats_overhead.py --rounds 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import allcores
from allcores._engine import recording

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from workloads import W1_ITEMS, inc  # noqa: E402

APPLY_CALLS = 2_000


def _w1(pool: allcores.Pool) -> float:
    started = time.perf_counter()
    out = pool.map(inc, range(W1_ITEMS))
    elapsed = time.perf_counter() - started
    assert out[-1] == W1_ITEMS
    return elapsed


def _applies(pool: allcores.Pool) -> float:
    started = time.perf_counter()
    handles = [pool.apply_async(inc, (i,)) for i in range(APPLY_CALLS)]
    assert [h.get() for h in handles][-1] == APPLY_CALLS
    return time.perf_counter() - started


def _per_chunk_cost(repeat: int = 40_000) -> tuple[float, float]:
    """Seconds the manager spends recording one chunk, and creating one call's record.

    Measured directly (the same calls the manager makes, below MAX_RECORDS: past it, merging
    records adds about 1 us a chunk, amortized), so the bound it gives holds however noisy the
    machine: recording costs chunks x the first, plus the second once per call.
    """
    from allcores._engine.recording import CallRecord, Recorder, Span

    rec = Recorder(2)
    call = CallRecord(1, "inc", 2)
    started = time.perf_counter()
    for i in range(repeat):
        end = 1.0 + i
        rec.chunk(call, Span(i & 1, 1, 1.0, end, 100, 0.001, 1e-5, max(0.0, 2.0 - end), 1,
                             1 << 20), 0.0)
    per_chunk = (time.perf_counter() - started) / repeat
    started = time.perf_counter()
    for i in range(repeat):
        CallRecord(i, "inc", 2)
    per_call = (time.perf_counter() - started) / repeat
    return per_chunk, per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    pool = allcores.Pool(2)
    manager = pool._engine._manager  # private: the benchmark detaches the recorder
    recorder = manager.recorder
    assert recording.ENABLED and recorder is not None
    times: dict[str, dict[str, list[float]]] = {
        name: {"on": [], "off": []} for name in ("W1", "apply_async")
    }
    try:
        _w1(pool)  # warm-up: workers started, the function cached, chunk sizes learned
        _applies(pool)
        for r in range(args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for workload, run in (("W1", _w1), ("apply_async", _applies)):
                for mode in order:
                    manager.recorder = recorder if mode == "on" else None
                    times[workload][mode].append(run(pool))
        manager.recorder = recorder
        pool.map(inc, range(10)).stats  # noqa: B018 - imports allcores._stats once, untimed
        results = pool.map(inc, range(W1_ITEMS))
        started = time.perf_counter()
        stats = results.stats
        build = time.perf_counter() - started
    finally:
        pool.terminate()
    out: dict[str, object] = {"rounds": args.rounds, "workers": 2}
    print(f"{args.rounds} rounds, 2 workers, medians (recording on vs off, same run)")
    for name, by_mode in times.items():
        on, off = statistics.median(by_mode["on"]), statistics.median(by_mode["off"])
        overhead = on / off - 1
        out[name] = {"on_s": on, "off_s": off, "overhead": overhead}
        print(f"  {name:<12} on {on * 1e3:8.1f} ms   off {off * 1e3:8.1f} ms   "
              f"overhead {overhead:+.1%}")
    per_chunk, per_call = _per_chunk_cost()
    w1_off = statistics.median(times["W1"]["off"])
    a_off = statistics.median(times["apply_async"]["off"])
    bound_w1 = (per_chunk * stats.chunks + per_call) / w1_off
    bound_apply = (per_chunk + per_call) * APPLY_CALLS / a_off
    out.update(per_chunk_s=per_chunk, per_call_s=per_call, bound_w1=bound_w1,
               bound_apply_async=bound_apply)
    print(f"  recording one chunk: {per_chunk * 1e6:.2f} us; one call's record: "
          f"{per_call * 1e6:.2f} us (measured directly)")
    print(f"  => upper bound from those: W1 {bound_w1:.3%} of its time, apply_async "
          f"{bound_apply:.2%}")
    out["stats_build_s"] = build
    out["w1_chunks"] = stats.chunks
    print(f"  building MapResults.stats for W1 ({stats.chunks} chunks): {build * 1e3:.2f} ms "
          "(on first access only)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
