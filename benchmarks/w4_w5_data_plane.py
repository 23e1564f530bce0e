"""Issue 4's data-plane benchmark: W4 big input, W4b shared once, W5 big output, memory check.

    python benchmarks/w4_w5_data_plane.py                    # full size (1 GiB, 2 GiB; ~2 min)
    python benchmarks/w4_w5_data_plane.py --scale 0.05 --rounds 1     # smoke test
    python benchmarks/w4_w5_data_plane.py --only T           # transport: pipe vs shm by size
    python benchmarks/w4_w5_data_plane.py --json dp.json

Workloads (../shared/benchmarks.md; 2 workers, one warm-up, --rounds timed rounds, medians,
ratios from this same run; --scale multiplies every array size):
  W4   a 1 GiB float64 array cut into 16 slices; each task returns its slice's sum, the slices
       passed as arguments.
         serial    sum of each slice in this process
         mp        multiprocessing.Pool(2, fork).map(slice_sum, slices)
         joblib    Parallel(n_jobs=2) with its automatic memmapping of big arguments. joblib
                   remembers memmapped arrays by object identity, so its timed rounds (the same
                   slice objects again) skip the copy; "joblib first" is its warm-up round, the
                   one comparable to a call with new data
         mp+shm    mp.Pool(2) carrying allcores' shm.pack/unpack by hand: what allcores.map
                   does once the engine sends every message through the shm transport
         allcores  allcores.map(slice_sum, slices, workers=2)
  W4b  the same job with each system's way to share the array once (not timed: the sharing)
         serial    as above
         mp        a module global inherited by fork; tasks get (lo, hi)
         allcores  allcores.share(array); tasks get (handle, lo, hi)
  W5   32 tasks, each returning np.full(2**21, i) (16 MiB)
         serial, mp, mpire (WorkerPool(2, keep_alive=True).map, no concatenation), mp+shm,
         allcores
  MEM  a 2 GiB array read whole by 2 worker processes, held while the parent measures: growth
       of the machine's used memory (MemTotal - MemAvailable) and the summed PSS of the three
       processes. "copies": the array pickled to each worker, as Pool.map does; "share":
       allcores.SharedArray filled in place and handed over as a handle.
  T    one-way transport of one array between two processes, pipe+pickle vs shm.pack/unpack,
       64 KiB .. 16 MiB (how shm.SHM_THRESHOLD was chosen)

Bars (issue 4): W4 allcores >= 10x mp and faster than joblib; W4b allcores within 1.5x of
serial; W5 allcores >= 5x mp; MEM share grows by ~1x the array (not 3x).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import _harness  # noqa: E402
from _harness import measure  # noqa: E402

WORKERS = 2
SLICES = 16
W4_BYTES = 1 << 30
W5_TASKS = 32
W5_LEN = 2**21
MEM_BYTES = 2 << 30
T_SIZES = [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20, 16 << 20]

SYSTEMS = ("serial", "mp", "joblib", "mpire", "mp+shm", "allcores")
SHOWN = ("serial", "mp", "joblib", "joblib first", "mpire", "mp+shm", "allcores")
WORKLOAD_IDS = ("W4", "W4b", "W5", "MEM", "T")

_GLOBAL: np.ndarray | None = None  # W4b "mp": inherited through fork


# ----------------------------------------------------------------- task functions


def slice_sum(a: np.ndarray) -> float:
    return float(a.sum())


def global_sum(bounds: tuple[int, int]) -> float:
    lo, hi = bounds
    return float(_GLOBAL[lo:hi].sum())


def shared_sum(args) -> float:
    handle, lo, hi = args
    return float(handle.array[lo:hi].sum())


def full(item, n=None) -> np.ndarray:
    """W5's task: a fresh array of n values i. Takes (i, n), or i, n as mpire unpacks tuples."""
    if n is None:
        item, n = item
    return np.full(n, item, dtype=np.float64)


def shm_slice_sum(data: bytes) -> float:
    from allcores._engine import shm

    return float(shm.unpack(data).sum())


def shm_full(item) -> bytes:
    from allcores._engine import shm

    return shm.pack(full(item))[0]


# ----------------------------------------------------------------- workloads


def run_w4(results, slices, systems, rounds):
    expected = sum(float(s.sum()) for s in slices)

    def check(values):
        assert abs(sum(values) - expected) <= 1e-6 * abs(expected), "wrong sums"

    row = results["W4"] = {}
    if "serial" in systems:
        row["serial"] = measure(lambda: [slice_sum(s) for s in slices], rounds=rounds, check=check)
    if "mp" in systems or "mp+shm" in systems:
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            pool.map(abs, range(WORKERS))
            if "mp" in systems:
                row["mp"] = measure(lambda: pool.map(slice_sum, slices), rounds=rounds, check=check)
            if "mp+shm" in systems:
                from allcores._engine import shm

                row["mp+shm"] = measure(
                    lambda: pool.map(shm_slice_sum, [shm.pack(s)[0] for s in slices]),
                    rounds=rounds,
                    check=check,
                )
    if "joblib" in systems:
        from joblib import Parallel, delayed

        with Parallel(n_jobs=WORKERS) as par:
            par(delayed(abs)(i) for i in range(WORKERS))  # workers up before the first round
            t = measure(
                lambda: par(delayed(slice_sum)(s) for s in slices), rounds=rounds, check=check
            )
        row["joblib"] = t
        if t.ok and t.warmup_s is not None:
            # joblib remembers memmapped arrays by identity: later rounds skip the copy.
            row["joblib first"] = _harness.Timing(times=(t.warmup_s,))
    if "allcores" in systems:
        import allcores

        allcores.map(abs, range(WORKERS), workers=WORKERS)
        row["allcores"] = measure(
            lambda: allcores.map(slice_sum, slices, workers=WORKERS), rounds=rounds, check=check
        )


def run_w4b(results, array, systems, rounds):
    global _GLOBAL
    n = len(array)
    bounds = [(i * n // SLICES, (i + 1) * n // SLICES) for i in range(SLICES)]
    expected = float(array.sum())

    def check(values):
        assert abs(sum(values) - expected) <= 1e-6 * abs(expected), "wrong sums"

    row = results["W4b"] = {}
    if "serial" in systems:
        row["serial"] = measure(
            lambda: [float(array[lo:hi].sum()) for lo, hi in bounds], rounds=rounds, check=check
        )
    if "mp" in systems:
        _GLOBAL = array
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            pool.map(abs, range(WORKERS))
            row["mp"] = measure(lambda: pool.map(global_sum, bounds), rounds=rounds, check=check)
        _GLOBAL = None
    if "allcores" in systems:
        import allcores

        t0 = time.perf_counter()
        handle = allcores.share(array)
        share_s = time.perf_counter() - t0
        try:
            allcores.map(abs, range(WORKERS), workers=WORKERS)
            items = [(handle, lo, hi) for lo, hi in bounds]
            t = measure(
                lambda: allcores.map(shared_sum, items, workers=WORKERS), rounds=rounds, check=check
            )
            t.extra["share_s"] = share_s
            row["allcores"] = t
        finally:
            handle.close()
        print(f"  (allcores.share() of the array took {_harness.format_seconds(share_s)}, once)")


def run_w5(results, systems, rounds, n):
    def check(values):
        assert len(values) == W5_TASKS
        assert all(v.shape == (n,) and v[0] == i for i, v in enumerate(values)), "wrong arrays"

    row = results["W5"] = {}
    tasks = [(i, n) for i in range(W5_TASKS)]
    if "serial" in systems:
        row["serial"] = measure(lambda: [full(t) for t in tasks], rounds=rounds, check=check)
    if "mp" in systems or "mp+shm" in systems:
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            pool.map(abs, range(WORKERS))
            if "mp" in systems:
                row["mp"] = measure(lambda: pool.map(full, tasks), rounds=rounds, check=check)
            if "mp+shm" in systems:
                from allcores._engine import shm

                row["mp+shm"] = measure(
                    lambda: [shm.unpack(d) for d in pool.map(shm_full, tasks)],
                    rounds=rounds,
                    check=check,
                )
    if "mpire" in systems:
        from mpire import WorkerPool

        with WorkerPool(n_jobs=WORKERS, keep_alive=True) as pool:
            pool.map(abs, range(WORKERS))
            row["mpire"] = measure(
                # mpire would np.concatenate array results unless told not to
                lambda: pool.map(full, tasks, concatenate_numpy_output=False),
                rounds=rounds,
                check=check,
            )
    if "allcores" in systems:
        import allcores

        allcores.map(abs, range(WORKERS), workers=WORKERS)
        row["allcores"] = measure(
            lambda: allcores.map(full, tasks, workers=WORKERS), rounds=rounds, check=check
        )


# ----------------------------------------------------------------- MEM


def _used_bytes() -> int:
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _mem_reader(conn) -> None:
    conn.send("up")  # imports done: the parent may take its baseline
    obj = conn.recv()  # a pickled copy of the array, or a SharedArray handle
    arr = obj.array if hasattr(obj, "array") else obj
    conn.send(float(arr.sum()))  # every page touched
    conn.recv()  # hold it until the parent has measured
    conn.close()


def run_mem(results, nbytes):
    ctx = multiprocessing.get_context("spawn")  # workers start bare: nothing inherited
    n = nbytes // 8
    out = results["MEM"] = {}
    for mode in ("copies", "share"):
        procs, conns = [], []
        for _ in range(WORKERS):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_mem_reader, args=(child,))
            p.start()
            procs.append(p)
            conns.append(parent)
        for c in conns:
            assert c.recv() == "up"
        before = _used_bytes()
        pss_before = sum(_pss(p.pid) for p in procs) + _pss(os.getpid())
        if mode == "copies":
            obj = np.ones(n)
        else:
            import allcores

            obj = allcores.SharedArray.empty(n)
            obj.array[:] = 1.0  # filled in place: the only copy
        for c in conns:
            c.send(obj)
        sums = [c.recv() for c in conns]
        assert all(s == n for s in sums), sums
        grown = _used_bytes() - before
        pss = sum(_pss(p.pid) for p in procs) + _pss(os.getpid()) - pss_before
        for c in conns:
            c.send("release")
        for p in procs:
            p.join()
        if mode == "share":
            obj.close()
        del obj
        out[mode] = {"used_growth": grown, "pss_growth": pss, "array": nbytes}
        print(
            f"  MEM {mode:7s}: machine used +{grown / 2**30:.2f} GiB, summed PSS "
            f"+{pss / 2**30:.2f} GiB for a {nbytes / 2**30:.2f} GiB array "
            f"({grown / nbytes:.2f}x / {pss / nbytes:.2f}x)"
        )


# ----------------------------------------------------------------- T: transport by size


def _t_sender(conn, size, n, mode):
    from allcores._engine import shm

    a = np.ones(size // 8)
    conn.recv()
    for _ in range(n):
        if mode == "pipe":
            conn.send_bytes(pickle.dumps(a, protocol=5))
        else:  # threshold 0: through shared memory at every size, to show the crossover
            conn.send_bytes(shm.pack(a, threshold=0)[0])
    conn.close()


def _t_once(size, mode, n):
    from allcores._engine import shm

    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    p = ctx.Process(target=_t_sender, args=(there, size, n, mode))
    p.start()
    t0 = time.perf_counter()
    here.send(1)
    for _ in range(n):
        data = here.recv_bytes()
        x = shm.unpack(data) if mode == "shm" else pickle.loads(data)
        x[-1]  # the receiver decides what it reads
        del x
    dt = (time.perf_counter() - t0) / n
    p.join()
    return dt


def run_t(results, rounds):
    from allcores._engine import shm

    print(f"  T (one way, per message; shm.SHM_THRESHOLD = {shm.SHM_THRESHOLD >> 10} KiB)")
    out = results["T"] = {}
    for size in T_SIZES:
        n = max(5, (64 << 20) // size)
        pipe = statistics.median(_t_once(size, "pipe", n) for _ in range(rounds))
        via = statistics.median(_t_once(size, "shm", n) for _ in range(rounds))
        out[size] = {"pipe": pipe, "shm": via}
        print(
            f"    {size >> 10:6d} KiB  pipe {pipe * 1e6:8.0f} us   shm {via * 1e6:8.0f} us"
            f"   pipe/shm {pipe / via:5.2f}x"
        )


# ----------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every array size")
    _harness.add_common_args(parser)
    args = parser.parse_args(argv)
    only = _harness.pick(args.only, WORKLOAD_IDS, "workload")
    systems = _harness.pick(args.systems, SYSTEMS, "system")

    print(_harness.machine_line())
    print(f"{WORKERS} workers, {args.rounds} rounds + warm-up, scale {args.scale}\n")
    results: dict = {}
    if "W4" in only or "W4b" in only:
        n = int(W4_BYTES * args.scale) // 8
        array = np.random.default_rng(0).random(n)
        slices = np.array_split(array, SLICES)
        if "W4" in only:
            run_w4(results, slices, systems, args.rounds)
        if "W4b" in only:
            run_w4b(results, array, systems, args.rounds)
        del array, slices
    if "W5" in only:
        run_w5(results, systems, args.rounds, max(1, int(W5_LEN * args.scale)))
    timed = [w for w in ("W4", "W4b", "W5") if w in results]
    if timed:
        shown = [s for s in SHOWN if any(s in results[w] for w in timed)]
        print()
        print(_harness.render_table(results, systems=shown, workloads=timed, baseline="serial"))
        print()
        pairs = [
            ("mp / allcores", "mp", "allcores"),
            ("joblib / allcores", "joblib", "allcores"),
            ("joblib first / allcores", "joblib first", "allcores"),
            ("mpire / allcores", "mpire", "allcores"),
            ("mp / mp+shm", "mp", "mp+shm"),
            ("allcores / serial", "allcores", "serial"),
        ]
        print(_harness.render_ratio_table(results, pairs=pairs, workloads=timed))
        print()
        _bars(results)
    # T before MEM: right after MEM frees gigabytes, a VM that hands free pages back to its
    # host (free page reporting) makes every fresh page slow for a while, shm's included.
    if "T" in only:
        run_t(results, args.rounds)
    if "MEM" in only:
        run_mem(results, int(MEM_BYTES * args.scale) // 8 * 8)
    if args.json:
        _harness.write_json(
            args.json, {"machine": _harness.machine_info(), "scale": args.scale, **results}
        )
    return 0


def _bars(results) -> None:
    r = _harness.ratio
    checks = [
        ("W4 allcores >= 10x mp", r(results.get("W4", {}), "mp", "allcores"), 10.0),
        ("W4 allcores faster than joblib", r(results.get("W4", {}), "joblib", "allcores"), 1.0),
        (
            "W4 allcores faster than joblib's first round",
            r(results.get("W4", {}), "joblib first", "allcores"),
            1.0,
        ),
        (
            "W4b allcores within 1.5x serial",
            r(results.get("W4b", {}), "serial", "allcores"),
            1 / 1.5,
        ),
        ("W5 allcores >= 5x mp", r(results.get("W5", {}), "mp", "allcores"), 5.0),
    ]
    for label, value, bar in checks:
        verdict = "n/a" if value is None else ("PASS" if value >= bar else "FAIL")
        shown = "-" if value is None else f"{value:.2f}"
        print(f"  {verdict:4s} {label} (measured {shown}, bar {bar:.2f})")


if __name__ == "__main__":
    sys.exit(main())
