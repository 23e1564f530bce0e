"""Issue 2's benchmark: W1, W2, W3, W3b and W7, allcores beside the peers in ONE run.

    python benchmarks/run.py                          # everything, 3 rounds (~4 min on 2 cores)
    python benchmarks/run.py --only W1,W3b --systems allcores,mp --rounds 5
    python benchmarks/run.py --json bench.json

Method (../shared/benchmarks.md): 2 workers; every pool except the W7 start-up probe is created
before timing; one warm-up round, then ``--rounds`` timed rounds; medians; every ratio computed
from numbers measured in this same run. A system that raises gets the error in its cell and the
others are still measured. The issue's bars are checked at the end (PASS / FAIL / n/a).

Systems (defaults everywhere, except the worker count):
  serial    a plain list comprehension
  mp        multiprocessing.Pool(2).map, fork context
  ppe       ProcessPoolExecutor(2).map (chunksize 1)
  joblib    Parallel(n_jobs=2)(delayed(f)(x) for x in items)  (loky backend, reused executor)
  mpire     WorkerPool(n_jobs=2, keep_alive=True).map  (keep_alive: the pool exists before timing)
  loky      loky.get_reusable_executor(2).map (chunksize 1)
  allcores  allcores.map(f, items, workers=2); W7 uses allcores.Pool(2)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402
from _harness import Timing, measure  # noqa: E402
from workloads import Workload, build_workloads, calibrate, inc  # noqa: E402

WORKERS = 2
#: W7 rounds are a few ms each and noisy: take this many times ``--rounds``.
W7_ROUND_FACTOR = 3
#: No cell may run longer than this (a hung system must not stall the peers' measurements).
CELL_TIMEOUT_S = 180

WORKLOAD_IDS = ("W1", "W2", "W3", "W3b", "W7")


class System:
    """A way to run ``fn`` over ``items`` with 2 workers. Subclasses fill in the three verbs."""

    key = ""
    label = ""

    def start(self) -> None:
        """Create the pool before any timing and bring its workers up."""

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def startup(self) -> Any:
        """W7: create a pool, run one trivial task, shut it down."""
        raise NotImplementedError

    def stop(self) -> None:
        """Release the pool created by :meth:`start`."""


class Serial(System):
    key, label = "serial", "serial"

    def map(self, fn, items):
        return list(map(fn, items))

    startup = None  # type: ignore[assignment]  # no pool to start: W7 shows "-"


class MpPool(System):
    key, label = "mp", "mp.Pool"
    ctx = multiprocessing.get_context("fork")  # the peers' figures are fork (3.14 defaults off it)

    def start(self):
        self.pool = self.ctx.Pool(WORKERS)
        self.pool.map(inc, range(WORKERS))

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def startup(self):
        with self.ctx.Pool(WORKERS) as pool:
            return pool.map(inc, [1])

    def stop(self):
        self.pool.terminate()
        self.pool.join()


class PPE(System):
    key, label = "ppe", "PPE"

    def start(self):
        self.ex = ProcessPoolExecutor(max_workers=WORKERS)
        list(self.ex.map(inc, range(WORKERS)))

    def map(self, fn, items):
        return list(self.ex.map(fn, items))

    def startup(self):
        with ProcessPoolExecutor(max_workers=WORKERS) as ex:
            return list(ex.map(inc, [1]))

    def stop(self):
        self.ex.shutdown(wait=True)


class Joblib(System):
    key, label = "joblib", "joblib"

    def start(self):
        import joblib

        self.joblib = joblib
        self.map(inc, range(WORKERS))

    def map(self, fn, items):
        delayed = self.joblib.delayed
        return self.joblib.Parallel(n_jobs=WORKERS)(delayed(fn)(x) for x in items)

    def startup(self):
        out = self.map(inc, [1])
        self._shutdown_executor()
        return out

    def _shutdown_executor(self):
        # joblib keeps its loky executor alive between calls and has no public "shut down";
        # get_reusable_executor() would build a new one when its kwargs differ from joblib's, so
        # reach the one joblib made.
        from joblib.externals.loky import reusable_executor

        ex = reusable_executor._executor
        if ex is not None:
            ex.shutdown(wait=True)

    def stop(self):
        self._shutdown_executor()


class Mpire(System):
    key, label = "mpire", "mpire"

    def start(self):
        from mpire import WorkerPool

        self.WorkerPool = WorkerPool
        self.pool = WorkerPool(n_jobs=WORKERS, keep_alive=True)
        self.pool.map(inc, range(WORKERS))

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def startup(self):
        with self.WorkerPool(n_jobs=WORKERS) as pool:
            return pool.map(inc, [1])

    def stop(self):
        self.pool.terminate()


class Loky(System):
    key, label = "loky", "loky"

    def start(self):
        import loky

        self.loky = loky
        self.ex = loky.get_reusable_executor(max_workers=WORKERS)
        list(self.ex.map(inc, range(WORKERS)))

    def map(self, fn, items):
        return list(self.ex.map(fn, items))

    def startup(self):
        ex = self.loky.get_reusable_executor(max_workers=WORKERS)
        out = ex.submit(inc, 1).result()
        ex.shutdown(wait=True)
        return out

    def stop(self):
        self.loky.get_reusable_executor(max_workers=WORKERS).shutdown(wait=True)


class Allcores(System):
    key, label = "allcores", "allcores"

    def start(self):
        import allcores

        self.allcores = allcores
        self.map(inc, range(WORKERS))

    def map(self, fn, items):
        return self.allcores.map(fn, items, workers=WORKERS)

    def startup(self):
        with self.allcores.Pool(WORKERS) as pool:
            return pool.map(inc, [1])

    def stop(self):
        shutdown = getattr(self.allcores, "shutdown", None)
        if shutdown is not None:
            shutdown()


SYSTEMS: dict[str, type[System]] = {
    cls.key: cls for cls in (Serial, MpPool, PPE, Joblib, Mpire, Loky, Allcores)
}


class CellTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CellTimeout(f"no result within {CELL_TIMEOUT_S} s (hung?)")


def _bounded(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with a SIGALRM deadline, so one hung system cannot stall the whole run."""

    def run():
        signal.setitimer(signal.ITIMER_REAL, CELL_TIMEOUT_S)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    return run


def _checker(expected: list[Any] | None) -> Callable[[Any], None] | None:
    if expected is None:
        return None

    def check(result):
        result = list(result)
        if result != expected:
            bad = next((i for i, (a, b) in enumerate(zip(result, expected)) if a != b), None)
            raise AssertionError(
                f"wrong result: {len(result)} items (want {len(expected)}), first diff at {bad}"
            )

    return check


# (workload, label, reference system, system, bar, how): the issue-2 bars. With how="faster",
# pass when reference_time / system_time >= bar; with how="at_most", when
# system_time / reference_time <= bar.
BARS: tuple[tuple[str, str, str, str, float, str], ...] = (
    ("W1", "allcores no slower than mp.Pool", "mp", "allcores", 1.0, "faster"),
    ("W1", "allcores >= 50x faster than PPE", "ppe", "allcores", 50.0, "faster"),
    ("W2", "speedup over serial >= 1.9", "serial", "allcores", 1.9, "faster"),
    ("W3", "speedup over serial >= 1.85", "serial", "allcores", 1.85, "faster"),
    ("W3b", "speedup over serial >= 1.85", "serial", "allcores", 1.85, "faster"),
    ("W3b", "allcores >= 1.6x faster than mp.Pool", "mp", "allcores", 1.6, "faster"),
    ("W7", "allcores <= 3x mp.Pool (fork)", "mp", "allcores", 3.0, "at_most"),
    ("W7", "allcores >= 5x faster than joblib", "joblib", "allcores", 5.0, "faster"),
    ("W7", "allcores >= 5x faster than mpire", "mpire", "allcores", 5.0, "faster"),
)


def check_bars(results: dict[str, dict[str, Timing]]) -> list[dict[str, Any]]:
    out = []
    for wid, label, ref, system, bar, how in BARS:
        r = _harness.ratio(results.get(wid, {}), SYSTEMS[ref].label, SYSTEMS[system].label)
        if r is None:
            verdict, shown = "n/a", "-"
        elif how == "faster":
            verdict, shown = ("PASS" if r >= bar else "FAIL"), f"{r:.2f}x"
        else:
            verdict, shown = ("PASS" if 1 / r <= bar else "FAIL"), f"{1 / r:.2f}x of {ref}"
        out.append({"workload": wid, "bar": label, "value": shown, "verdict": verdict})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _harness.add_common_args(parser)
    parser.add_argument(
        "--per-ms", type=float, help="spin iterations per ms (skip calibration; from a --json)"
    )
    args = parser.parse_args(argv)
    wanted = _harness.pick(args.only, WORKLOAD_IDS, "workload")
    aliases = {cls.label.lower(): key for key, cls in SYSTEMS.items()}
    requested = args.systems and ",".join(
        aliases.get(s.strip().lower(), s.strip()) for s in args.systems.split(",")
    )
    keys = _harness.pick(requested, SYSTEMS, "system")

    info = _harness.machine_info()
    print(_harness.machine_line(info))
    per_ms = args.per_ms or calibrate()
    workloads = build_workloads(per_ms)
    print(
        f"Calibration: spin does {per_ms:,.0f} iterations/ms, so one W2 task = "
        f"{workloads['W2'].items[0]:,} iterations; W3 = {workloads['W3'].serial_work_s:.2f} s of "
        f"serial work. {WORKERS} workers, 1 warm-up + {args.rounds} rounds, medians.\n",
        flush=True,
    )
    signal.signal(signal.SIGALRM, _alarm)

    systems: dict[str, System] = {}
    broken: dict[str, str] = {}
    for key in keys:
        system = SYSTEMS[key]()
        try:
            _bounded(system.start)()
        except Exception as exc:
            broken[key] = f"start failed: {_harness._describe(exc)}"
        systems[key] = system

    results: dict[str, dict[str, Timing]] = {}
    for wid in wanted:
        row = results.setdefault(wid, {})
        wl: Workload | None = workloads.get(wid)
        expected = wl.expected if wl is not None else None
        for key, system in systems.items():
            label = system.label
            if key in broken:
                row[label] = Timing(error=broken[key])
            elif wid == "W7":
                if system.startup is None:
                    continue
                row[label] = measure(_bounded(system.startup), rounds=args.rounds * W7_ROUND_FACTOR)
            else:
                assert wl is not None
                fn, items = wl.fn, wl.items
                captured: list[Any] = []
                # serial runs first; its result is the reference the others are checked against
                check = _checker(expected) if expected is not None else captured.append
                row[label] = measure(
                    _bounded(lambda s=system, f=fn, i=items: s.map(f, i)),
                    rounds=args.rounds,
                    check=check if (expected is not None or key == "serial") else None,
                )
                if captured and row[label].ok:
                    expected = list(captured[0])
            t = row.get(label)
            if t is not None and t.error and "CellTimeout" in t.error:
                broken[key] = t.error  # skip the rest of a hung system
            status = t.error if t is not None and t.error else _harness._cell_time(t)
            print(f"  {wid:4} {label:9} {status}", flush=True)

    for system in systems.values():
        try:
            _bounded(system.stop)()
        except Exception as exc:
            print(f"  (stopping {system.label} failed: {_harness._describe(exc)})")

    labels = [s.label for s in systems.values()]
    print("\n## Median time per workload (speedup over serial in brackets)\n")
    print(_harness.render_table(results, systems=labels, workloads=wanted, baseline="serial"))
    pairs = [
        ("allcores vs mp.Pool (mp.Pool time / allcores time)", "mp.Pool", "allcores"),
        ("allcores vs PPE", "PPE", "allcores"),
        ("allcores vs joblib", "joblib", "allcores"),
        ("allcores vs mpire", "mpire", "allcores"),
        ("allcores vs loky", "loky", "allcores"),
    ]
    pairs = [p for p in pairs if p[1] in labels and p[2] in labels]
    if pairs:
        print("\n## allcores against each peer (above 1 = allcores faster)\n")
        print(_harness.render_ratio_table(results, pairs=pairs, workloads=wanted))
    bars = [b for b in check_bars(results) if b["workload"] in wanted]
    print("\n## Issue 2 bars\n")
    for b in bars:
        print(f"- {b['verdict']:4} {b['workload']:4} {b['bar']}: {b['value']}")
    if args.json:
        _harness.write_json(
            args.json,
            {
                "machine": info,
                "workers": WORKERS,
                "rounds": args.rounds,
                "spin_iterations_per_ms": per_ms,
                "workloads": {
                    wid: {"description": w.description, "tasks": len(w.items)}
                    for wid, w in workloads.items()
                },
                "results": results,
                "bars": bars,
            },
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
