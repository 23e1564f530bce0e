"""Issue 2's memory bar: ``imap`` over a 10-million-item generator keeps memory flat.

    python benchmarks/imap_memory.py                        # allcores and mp.Pool, 10M items
    python benchmarks/imap_memory.py --items 1000000 --systems allcores --json mem.json

Each system runs in a fresh Python process that warms its pool up, then consumes
``imap(inc, (i for i in range(N)))`` while a background thread samples the resident memory (RSS)
of the process and of each of its workers every few milliseconds. Reported: peak RSS growth of
the parent over its level just before the imap began, the largest growth of any worker, the
items consumed and the rate. The bar: allcores' parent grows by less than 50 MB.

A system still running after ``--time-limit`` seconds stops consuming (the row says how many
items it got through); memory so far is still reported.

Systems:
  allcores           allcores.imap(inc, gen, workers=2)                (ordered, chunksize auto)
  allcores-unordered allcores.imap(inc, gen, workers=2, ordered=False)
  mp-chunk1          multiprocessing.Pool(2).imap(inc, gen)            (chunksize 1, the default)
  mp-chunk1000       multiprocessing.Pool(2).imap(inc, gen, chunksize=1000)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402
from workloads import inc  # noqa: E402

WORKERS = 2
ITEMS = 10_000_000
BAR_MB = 50.0
SAMPLE_S = 0.01  # RSS sampling period of the watcher thread
#: Each system's time budget for consuming the items: allcores does 10M in seconds, while
#: mp.Pool.imap with chunksize 1 needs ~150 s on 2 cores and is cut short.
TIME_LIMIT_S = 60.0
#: The parent kills a child that has not reported this long after its time budget ran out.
KILL_GRACE_S = 30.0
CHECK_EVERY = 1 << 16  # items between two looks at the clock while consuming
MB = 1e6

SYSTEMS = ("allcores", "allcores-unordered", "mp-chunk1", "mp-chunk1000")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class RssWatcher:
    """Samples this process's RSS and each child's from a daemon thread until stopped."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.base = _rss(os.getpid()) or 0
        self.peak = self.base
        self.worker_base: dict[int, int] = {}
        self.worker_peak: dict[int, int] = {}
        self._sample_workers()  # the workers' level before the imap starts is their base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample_workers(self) -> None:
        import psutil

        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            rss = _rss(child.pid)
            if rss is None:
                continue
            self.worker_base.setdefault(child.pid, rss)
            self.worker_peak[child.pid] = max(self.worker_peak.get(child.pid, 0), rss)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(SAMPLE_S):
            rss = _rss(os.getpid())
            if rss is not None:
                self.peak = max(self.peak, rss)
            tick += 1
            if tick % 5 == 0:  # listing children costs more; 50 ms is plenty for them
                self._sample_workers()

    def __enter__(self) -> RssWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(os.getpid()) or 0)
        self._sample_workers()

    def report(self) -> dict[str, Any]:
        growth = [self.worker_peak[p] - self.worker_base[p] for p in self.worker_peak]
        return {
            "parent_base_mb": self.base / MB,
            "parent_growth_mb": (self.peak - self.base) / MB,
            "worker_growth_mb": max(growth) / MB if growth else None,
            "workers_seen": len(self.worker_peak),
        }


def _open(system: str) -> tuple[Any, Any]:
    """(imap callable over (fn, iterable), close callable) for one system."""
    if system.startswith("allcores"):
        import allcores

        ordered = system == "allcores"

        def imap(fn, it):
            return allcores.imap(fn, it, workers=WORKERS, ordered=ordered)

        return imap, getattr(allcores, "shutdown", lambda: None)
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(WORKERS)
    chunksize = 1 if system == "mp-chunk1" else 1000

    def imap(fn, it):
        return pool.imap(fn, it, chunksize=chunksize)

    return imap, pool.terminate


def child(system: str, items: int, time_limit: float) -> dict[str, Any]:
    imap, close = _open(system)
    out: dict[str, Any] = {"system": system, "items": items}
    try:
        # Warm-up: the workers exist before the base levels are taken.
        assert sum(imap(inc, range(1000))) == sum(range(1, 1001))
        watcher = RssWatcher()
        count = total = 0
        t0 = time.perf_counter()
        with watcher:
            for r in imap(inc, (i for i in range(items))):
                total += r
                count += 1
                if count % CHECK_EVERY == 0 and time.perf_counter() - t0 > time_limit:
                    break
        elapsed = time.perf_counter() - t0
        out.update(watcher.report())
        out.update(consumed=count, elapsed=elapsed, rate=count / elapsed if elapsed else 0.0)
        if count == items:
            out["correct"] = total == items * (items + 1) // 2
    except BaseException as exc:
        out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    finally:
        try:
            close()
        except Exception:
            pass
    return out


def _row(r: dict[str, Any]) -> str:
    if "error" in r and "parent_growth_mb" not in r:
        return f"| {r['system']} | error: {r['error'][:80]} | | | | |"
    done = f"{r['consumed']:,}" + ("" if r["consumed"] == r["items"] else " (time limit)")
    if r.get("correct") is False:
        done += " WRONG SUM"
    wg = r["worker_growth_mb"]
    return (
        f"| {r['system']} | {done} | {r['elapsed']:.1f} s | {r['rate'] / 1e3:,.0f} k/s | "
        f"{r['parent_growth_mb']:.1f} MB | {'-' if wg is None else f'{wg:.1f} MB'} |"
    )


def _run_child(cmd: list[str], limit: float) -> dict[str, Any]:
    """Run one child in its own session; on overrun SIGKILL its whole process group.

    Output goes through files, not pipes: a worker that outlives its parent would hold a pipe
    open and stall the read.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"error": f"hung; killed after {limit:.0f} s"}
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind
            except OSError:
                pass
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        if not lines:
            return {"error": f"no report (exit {proc.returncode}); stderr: {err.read()[-300:]}"}
        return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], int(argv[2]), float(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S)
    parser.add_argument("--systems", metavar="NAMES", help=f"comma-separated, of {SYSTEMS}")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    systems = _harness.pick(args.systems, SYSTEMS, "system")
    print(_harness.machine_line())
    print(f"imap(inc, generator of {args.items:,} ints), {WORKERS} workers, results consumed\n")
    rows = []
    for system in systems:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", system]
        cmd += [str(args.items), str(args.time_limit)]
        row = _run_child(cmd, args.time_limit + KILL_GRACE_S) or {"system": system}
        row.setdefault("system", system)
        rows.append(row)
        print(f"  {_row(row)}", flush=True)
    print("\n| system | items consumed | time | rate | parent RSS growth | worker RSS growth |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    for row in rows:
        if row["system"].startswith("allcores"):
            g = row.get("parent_growth_mb")
            verdict = "n/a" if g is None else ("PASS" if g < BAR_MB else "FAIL")
            shown = "-" if g is None else f"{g:.1f} MB"
            print(f"\n- {verdict} {row['system']}: parent RSS growth {shown} < {BAR_MB:.0f} MB")
    if args.json:
        _harness.write_json(args.json, {"machine": _harness.machine_info(), "rows": rows})
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
