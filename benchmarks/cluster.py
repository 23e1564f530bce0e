"""C1/C2: allcores on a 2-worker local Dask cluster and a local Ray (num_cpus=2), beside each
engine's naive way and its batching peer, plus the crash and timeout probes; one run, ratios
inside the run, cluster start-up excluded from the timings and reported.

    python benchmarks/cluster.py [--rounds 3] [--engines dask,ray] [--json out.json]

C1 (Dask): W1 (200,000 tiny items) with allcores ``backend=client`` against a naive
``client.map`` (timed on 20,000 items and scaled: at ~1-3 ms per task the whole would take
minutes) and joblib's dask backend. C2 (Ray): W1 against naive per-item ``.remote`` (20,000,
scaled) and ``ray.util.multiprocessing.Pool.map``; W3b (skewed, heavy last) against
``ray.util.multiprocessing.Pool.map`` and the serial loop. Probes: ``os._exit`` in 1 of 100
items; a 10 s item under a 1 s timeout among 0.1 s ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle

sys.path.insert(0, str(Path(__file__).parent))
import allcores  # noqa: E402
import workloads  # noqa: E402

cloudpickle.register_pickle_by_value(workloads)

W1_ITEMS = 200_000
NAIVE_ITEMS = 20_000


def crash_on(x):
    if x == 37:
        os._exit(1)
    return x


def sleep_then(args):
    x, seconds, folder = args
    Path(folder, f"{x}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    return x


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def timed(fn, rounds: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


PROBE_LIMIT_S = 90


def limited(run):
    """run() in a daemon thread; raises TimeoutError if it has not returned in PROBE_LIMIT_S
    (a baseline that hangs must not stall the benchmark)."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = run()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(PROBE_LIMIT_S)
    if thread.is_alive():
        raise TimeoutError(f"hangs (gave up after {PROBE_LIMIT_S} s)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def probe_crash(run) -> dict:
    t0 = time.perf_counter()
    try:
        out = limited(run)
        ok = [x for x in out if not isinstance(x, BaseException)]
        failures = getattr(out, "failures", [])
        text = (f"{len(ok)} results, failed: "
                f"{[(f.index, type(f.error).__name__) for f in failures]}")
    except BaseException as exc:  # noqa: BLE001 - the probe records whatever happens
        text = f"whole call failed: {type(exc).__name__} {str(exc)[:60]}"
    return {"outcome": text, "seconds": round(time.perf_counter() - t0, 2)}


def probe_timeout(run) -> dict:
    """run(items) -> list; items are (x, seconds, folder); item 0 sleeps 10 s."""
    folder = tempfile.mkdtemp(prefix="allcores-bench-")
    items = [(0, 10.0, folder)] + [(i, 0.1, folder) for i in range(1, 8)]
    t0 = time.perf_counter()
    try:
        out = limited(lambda: run(items))
        text = f"returned {sum(not isinstance(x, BaseException) for x in out)} results"
        failures = getattr(out, "failures", [])
        if failures:
            text += f", failed: {[(f.index, type(f.error).__name__) for f in failures]}"
    except BaseException as exc:  # noqa: BLE001
        text = f"raised {type(exc).__name__}"
    seconds = time.perf_counter() - t0
    time.sleep(0.5)
    pid_file = Path(folder, "0.pid")
    still = pid_file.exists() and _alive(int(pid_file.read_text()))
    return {"outcome": text, "seconds": round(seconds, 2), "slow_item_still_running": still}


def bench_dask(rounds: int) -> dict:
    import distributed
    import joblib

    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                       scheduler_kwargs={"dashboard": False})
    client = distributed.Client(cluster)  # the default client: joblib's dask backend uses it
    client.wait_for_workers(2)
    startup = time.perf_counter() - t0
    inc = workloads.inc
    expected = [x + 1 for x in range(W1_ITEMS)]
    res: dict = {"startup_s": startup}

    def ours():
        assert allcores.map(inc, range(W1_ITEMS), backend=client) == expected

    def naive():
        assert client.gather(client.map(inc, range(NAIVE_ITEMS))) == expected[:NAIVE_ITEMS]

    def joblib_dask():
        with joblib.parallel_config(backend="dask"):
            out = joblib.Parallel()(joblib.delayed(inc)(x) for x in range(W1_ITEMS))
        assert out == expected

    res["allcores"] = timed(ours, rounds)
    naive_t = timed(naive, 1)
    res["naive_client_map_scaled"] = {
        "median_s": naive_t["median_s"] * W1_ITEMS / NAIVE_ITEMS,
        "measured_on": NAIVE_ITEMS, "times_s": naive_t["times_s"],
    }
    res["joblib_dask"] = timed(joblib_dask, max(1, rounds - 2))
    res["ratio_vs_naive"] = res["naive_client_map_scaled"]["median_s"] / res["allcores"]["median_s"]
    res["ratio_vs_joblib"] = res["joblib_dask"]["median_s"] / res["allcores"]["median_s"]

    res["crash_allcores"] = probe_crash(
        lambda: allcores.map(crash_on, range(100), backend=client, on_error="collect"))
    res["crash_naive"] = probe_crash(lambda: client.gather(client.map(crash_on, range(100))))
    res["after_crash_works"] = allcores.map(inc, [1], backend=client) == [2]
    res["timeout_allcores"] = probe_timeout(
        lambda items: allcores.map(sleep_then, items, backend=client, timeout=1,
                                   on_error="collect"))

    def naive_timeout_bounded(items):
        futures = client.map(sleep_then, items, pure=False)
        distributed.wait(futures, timeout=1)
        return [f.result(timeout=0) for f in futures]

    res["timeout_naive"] = probe_timeout(naive_timeout_bounded)
    # The road not taken for Dask timeouts: restarting the worker under its nanny.
    worker = sorted(client.scheduler_info()["workers"])[0]
    t0 = time.perf_counter()
    client.restart_workers([worker])
    res["nanny_restart_s"] = time.perf_counter() - t0
    allcores.shutdown()
    client.close()
    cluster.close()
    return res


def bench_w3b(ray, pool, per_ms: float, rounds: int) -> dict:
    """W3b on Ray: serial in this process, serial inside one Ray task (what a Ray worker gets
    of a core here), allcores and Ray's Pool.map, interleaved round by round so a neighbour's
    load falls on all of them alike; the load average is reported beside them."""
    w3b = workloads.build_workloads(per_ms)["W3b"]
    spin = workloads.spin

    @ray.remote(num_cpus=1)
    def serial_in_ray(items):
        t0 = time.perf_counter()
        for n in items:
            spin(n)
        return time.perf_counter() - t0

    # The best any scheduler could do on Ray here: the items split in advance into two halves
    # of equal known work (greedy by size), one Ray task per half, started together.
    halves: list[list[int]] = [[], []]
    for n in sorted(w3b.items, reverse=True):
        min(halves, key=sum).append(n)

    def perfect_split():
        t0 = time.perf_counter()
        ray.get([serial_in_ray.remote(h) for h in halves])
        return time.perf_counter() - t0

    ray.get(serial_in_ray.remote(w3b.items[:5]))
    allcores.map(spin, w3b.items[:10], backend="ray")
    pool.map(spin, w3b.items[:10])
    times: dict[str, list[float]] = {"serial": [], "serial_in_ray": [], "perfect_split": [],
                                     "allcores": [], "ray_pool_map": []}
    # CPU the driver process itself used during each map (its engine thread, Ray's threads):
    # on two cores, what the driver takes the workers do not get.
    driver_cpu: dict[str, list[float]] = {"allcores": [], "ray_pool_map": []}
    loads = [os.getloadavg()[0]]
    stats = None
    for _ in range(rounds):
        times["serial"].append(once(lambda: [spin(n) for n in w3b.items]))
        times["serial_in_ray"].append(ray.get(serial_in_ray.remote(w3b.items)))
        times["perfect_split"].append(perfect_split())
        t0, c0 = time.perf_counter(), time.process_time()
        out = allcores.map(spin, w3b.items, backend="ray")
        times["allcores"].append(time.perf_counter() - t0)
        driver_cpu["allcores"].append(time.process_time() - c0)
        stats = out.stats
        c0 = time.process_time()
        times["ray_pool_map"].append(once(lambda: pool.map(spin, w3b.items)))
        driver_cpu["ray_pool_map"].append(time.process_time() - c0)
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "serial_s": med["serial"], "serial_in_ray_s": med["serial_in_ray"],
        "perfect_split_s": med["perfect_split"],
        "speedup_perfect_split": med["serial"] / med["perfect_split"],
        "allcores": {"median_s": med["allcores"], "times_s": times["allcores"]},
        "ray_pool_map": {"median_s": med["ray_pool_map"], "times_s": times["ray_pool_map"]},
        "speedup_allcores": med["serial"] / med["allcores"],
        "speedup_ray_pool": med["serial"] / med["ray_pool_map"],
        "ratio": med["ray_pool_map"] / med["allcores"],
        "load_average": loads,
        "driver_cpu_s": {k: statistics.median(v) for k, v in driver_cpu.items()},
        # The last allcores round's own figures: time in the function against the CPU it got.
        "last_busy_s": stats.busy_seconds if stats else None,
        "last_cpu_s": stats.cpu_seconds if stats else None,
        "last_chunks": stats.chunks if stats else None,
        "last_losses": dataclasses.asdict(stats.losses) if stats else None,
    }


def bench_ray(rounds: int, per_ms: float, w3b_only: bool = False) -> dict:
    import ray
    from ray.util.multiprocessing import Pool as RayPool

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    inc = workloads.inc
    res: dict = {"startup_s": startup}
    remote_inc = ray.remote(inc)
    pool = RayPool(2)

    if w3b_only:
        res["w3b"] = bench_w3b(ray, pool, per_ms, rounds)
        allcores.shutdown()
        pool.terminate()
        ray.shutdown()
        return res
    res["allcores"] = timed(lambda: allcores.map(inc, range(W1_ITEMS), backend="ray"), rounds)
    naive_t = timed(lambda: ray.get([remote_inc.remote(x) for x in range(NAIVE_ITEMS)]), 1)
    res["naive_remote_scaled"] = {
        "median_s": naive_t["median_s"] * W1_ITEMS / NAIVE_ITEMS,
        "measured_on": NAIVE_ITEMS, "times_s": naive_t["times_s"],
    }
    res["ray_pool_map"] = timed(lambda: pool.map(inc, range(W1_ITEMS)), rounds)
    res["ratio_vs_naive"] = res["naive_remote_scaled"]["median_s"] / res["allcores"]["median_s"]
    res["ratio_vs_ray_pool"] = res["ray_pool_map"]["median_s"] / res["allcores"]["median_s"]

    res["w3b"] = bench_w3b(ray, pool, per_ms, rounds)
    res["crash_allcores"] = probe_crash(
        lambda: allcores.map(crash_on, range(100), backend="ray", on_error="collect"))
    remote_crash = ray.remote(crash_on)
    res["crash_naive"] = probe_crash(lambda: ray.get([remote_crash.remote(x) for x in range(100)]))
    res["crash_ray_pool"] = probe_crash(lambda: RayPool(2).map(crash_on, range(100)))
    res["after_crash_works"] = allcores.map(inc, [1], backend="ray") == [2]
    res["timeout_allcores"] = probe_timeout(
        lambda items: allcores.map(sleep_then, items, backend="ray", timeout=1,
                                   on_error="collect"))
    remote_sleep = ray.remote(sleep_then)

    def naive_timeout(items):
        refs = [remote_sleep.remote(x) for x in items]
        return ray.get(refs, timeout=1)

    res["timeout_naive"] = probe_timeout(naive_timeout)
    allcores.shutdown()
    pool.terminate()
    ray.shutdown()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="dask,ray")
    parser.add_argument("--json", default=None)
    parser.add_argument("--w3b-only", action="store_true",
                        help="Ray's W3b rounds alone (no W1, no probes)")
    args = parser.parse_args()
    per_ms = workloads.calibrate()
    out: dict = {}
    engines = args.engines.split(",")
    if "dask" in engines:
        out["dask"] = bench_dask(args.rounds)
        d = out["dask"]
        print(f"C1 Dask (2 workers; start-up {d['startup_s']:.1f} s, excluded)")
        print(f"  W1 allcores          {d['allcores']['median_s']:.3f} s")
        print(f"  W1 naive client.map  {d['naive_client_map_scaled']['median_s']:.1f} s "
              f"(scaled from {NAIVE_ITEMS:,})  -> allcores {d['ratio_vs_naive']:.0f}x faster")
        print(f"  W1 joblib dask       {d['joblib_dask']['median_s']:.3f} s "
              f"-> allcores {d['ratio_vs_joblib']:.1f}x faster")
        for k in ("crash_allcores", "crash_naive", "timeout_allcores", "timeout_naive"):
            print(f"  {k:18s} {d[k]}")
        print(f"  restarting one worker under its nanny: {d['nanny_restart_s']:.2f} s")
    if "ray" in engines:
        out["ray"] = bench_ray(args.rounds, per_ms, args.w3b_only)
        r = out["ray"]
        w = r["w3b"]
        print(f"C2 W3b on Ray ({args.rounds} rounds, interleaved; load average "
              f"{min(w['load_average']):.1f}-{max(w['load_average']):.1f})")
        print(f"  serial {w['serial_s']:.2f} s, serial inside one Ray task "
              f"{w['serial_in_ray_s']:.2f} s, a perfect split in advance over two Ray tasks "
              f"{w['perfect_split_s']:.2f} s ({w['speedup_perfect_split']:.2f}x serial: the "
              "best any scheduler could do here)")
        print(f"  allcores {w['speedup_allcores']:.2f}x serial, ray Pool.map "
              f"{w['speedup_ray_pool']:.2f}x -> allcores {w['ratio']:.2f}x faster")
        print(f"  the driver's own CPU per map: allcores {w['driver_cpu_s']['allcores']:.3f} s, "
              f"ray Pool.map {w['driver_cpu_s']['ray_pool_map']:.3f} s")
        print(f"  last allcores round: {w['last_chunks']} chunks, {w['last_busy_s']:.2f} s in the "
              f"function, {w['last_cpu_s']:.2f} s of CPU; losses {w['last_losses']}")
        if args.w3b_only:
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=2, default=str))
            return
        print(f"C2 Ray (num_cpus=2; start-up {r['startup_s']:.1f} s, excluded)")
        print(f"  W1 allcores          {r['allcores']['median_s']:.3f} s")
        print(f"  W1 naive .remote     {r['naive_remote_scaled']['median_s']:.1f} s "
              f"(scaled from {NAIVE_ITEMS:,})  -> allcores {r['ratio_vs_naive']:.0f}x faster")
        print(f"  W1 ray Pool.map      {r['ray_pool_map']['median_s']:.3f} s "
              f"-> allcores {r['ratio_vs_ray_pool']:.1f}x faster")
        for k in ("crash_allcores", "crash_naive", "crash_ray_pool", "timeout_allcores",
                  "timeout_naive"):
            print(f"  {k:18s} {r[k]}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
