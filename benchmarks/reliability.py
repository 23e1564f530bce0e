"""Issue 3's reliability table, measured, not quoted: how each pool behaves when things go wrong.

    python benchmarks/reliability.py                       # every probe x every system (~3 min)
    python benchmarks/reliability.py --probes exit,sigint --systems allcores,mp --json rel.json

Every (probe, system) pair runs in a fresh Python process (its own session, so its process
group holds it and its workers) under a hard wall-clock limit; a probe that does not finish is
reported as "hangs (killed after N s)" and everything in its process group is SIGKILLed.

Probes (2 workers everywhere; allcores runs with ``on_error="collect"``):
  exit     one task of a 100-task map calls ``os._exit(1)``
  sigkill  one task of a 100-task map SIGKILLs its own worker
  segv     one task of a 100-task map segfaults (``ctypes.string_at(0)``)
  timeout  a 10 s task (with 3 quick ones) under each system's own timeout mechanism set to 1 s;
           the task writes a marker when its sleep ends or is interrupted, and the probe also
           watches its worker's pid, so "cut" is observed, not assumed
  sigint   SIGINT sent to the process group (what Ctrl-C in a terminal does) while a map of
           3 s tasks runs: seconds until the process is gone, workers left behind, and new
           entries in /dev/shm (entries named with another process's pid are left out)
  lambda   a lambda as the function
  lock     a ``threading.Lock`` as an argument
After the crash probes, each pool is asked for one more small map: "pool usable" or not.

Systems: mp (multiprocessing.Pool, fork), ppe (ProcessPoolExecutor), joblib (loky backend),
mpire (WorkerPool), allcores (allcores.map on its default pool).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402

WORKERS = 2
N_TASKS = 100
#: The item that crashes in the exit/sigkill/segv probes (not the first, not in the last chunk).
CRASH_ITEM = 37
SLOW_TASK_S = 10.0
TIMEOUT_S = 1.0
SIGINT_TASK_S = 3.0
SIGINT_TASKS = 20
#: Hard wall-clock limits per probe (seconds, from process start); the brief bounds each at 15 s.
LIMITS = {
    "exit": 10.0,
    "sigkill": 10.0,
    "segv": 10.0,
    "timeout": 15.0,
    "sigint": 10.0,
    "lambda": 10.0,
    "lock": 10.0,
}
PROBES = tuple(LIMITS)
#: How long after the interrupted process is gone we look again for left-over workers.
LEFTOVER_GRACE_S = 1.0
#: The timeout probe stops watching this long after the slow task would have finished.
CUT_WATCH_MARGIN_S = 0.5
POLL_S = 0.02  # this is a measuring script watching other processes, not the engine
ENV_DIR = "ALLCORES_RELIABILITY_DIR"

# --------------------------------------------------------------------------------------------
# Tasks (run in the workers). They find the probe's scratch folder through the environment,
# which every start method passes on.


def _scratch() -> Path:
    return Path(os.environ[ENV_DIR])


def double(i: int) -> int:
    return i * 2


def crash_exit(i: int) -> int:
    if i == CRASH_ITEM:
        os._exit(1)
    return i * 2


def crash_sigkill(i: int) -> int:
    if i == CRASH_ITEM:
        os.kill(os.getpid(), signal.SIGKILL)
    return i * 2


def crash_segv(i: int) -> int:
    if i == CRASH_ITEM:
        import ctypes

        ctypes.string_at(0)
    return i * 2


def slow_or_quick(i: int) -> int:
    """Item 0 sleeps 10 s, leaving a trace of how its sleep ended; the others return at once."""
    if i != 0:
        return i * 2
    d = _scratch()
    (d / "slow.started").write_text(f"{os.getpid()} {time.time()}")
    try:
        time.sleep(SLOW_TASK_S)
    except BaseException as exc:
        (d / "slow.interrupted").write_text(type(exc).__name__)
        raise
    (d / "slow.done").write_text(str(time.time()))
    return 0


def sleepy(i: int) -> int:
    (_scratch() / f"sleepy.{i}.started").write_text(str(os.getpid()))
    time.sleep(SIGINT_TASK_S)
    return i


def hold_lock(lock: Any) -> int:
    with lock:
        return 1


# --------------------------------------------------------------------------------------------
# Systems, each used the way its documentation shows, with defaults except the worker count.


class Probed:
    label = ""

    def __enter__(self) -> Probed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map(self, fn, items):
        raise NotImplementedError

    def map_timeout(self, fn, items, timeout):
        raise NotImplementedError


class MpPool(Probed):
    label = "mp.Pool"

    def __enter__(self):
        import multiprocessing

        self.pool = multiprocessing.get_context("fork").Pool(WORKERS)
        return self

    def __exit__(self, *exc):
        self.pool.terminate()  # what `with Pool() as pool:` does

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def map_timeout(self, fn, items, timeout):
        return self.pool.map_async(fn, items).get(timeout=timeout)


class PPE(Probed):
    label = "PPE"

    def __enter__(self):
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(max_workers=WORKERS)
        return self

    def __exit__(self, *exc):
        self.ex.shutdown(wait=True)  # what `with ProcessPoolExecutor() as ex:` does

    def map(self, fn, items):
        return list(self.ex.map(fn, items))

    def map_timeout(self, fn, items, timeout):
        return list(self.ex.map(fn, items, timeout=timeout))


class Joblib(Probed):
    label = "joblib"

    def map(self, fn, items):
        from joblib import Parallel, delayed

        return Parallel(n_jobs=WORKERS)(delayed(fn)(x) for x in items)

    def map_timeout(self, fn, items, timeout):
        from joblib import Parallel, delayed

        return Parallel(n_jobs=WORKERS, timeout=timeout)(delayed(fn)(x) for x in items)


class Mpire(Probed):
    label = "mpire"

    def __enter__(self):
        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=WORKERS, keep_alive=True)
        return self

    def __exit__(self, *exc):
        self.pool.terminate()

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def map_timeout(self, fn, items, timeout):
        return self.pool.map(fn, items, task_timeout=timeout)


class Allcores(Probed):
    label = "allcores"

    def __enter__(self):
        import allcores

        self.allcores = allcores
        return self

    def map(self, fn, items):
        return self.allcores.map(fn, items, workers=WORKERS, on_error="collect")

    def map_timeout(self, fn, items, timeout):
        return self.allcores.map(fn, items, workers=WORKERS, on_error="collect", timeout=timeout)


SYSTEMS: dict[str, type[Probed]] = {
    "mp": MpPool,
    "ppe": PPE,
    "joblib": Joblib,
    "mpire": Mpire,
    "allcores": Allcores,
}

# --------------------------------------------------------------------------------------------
# The child: runs one probe against one system and appends JSON events to events.jsonl.


def _emit(**event: Any) -> None:
    with open(_scratch() / "events.jsonl", "a") as fh:
        fh.write(json.dumps(event) + "\n")


def _describe(exc: BaseException) -> dict[str, str]:
    msg = " ".join(str(exc).split())
    return {"error_type": type(exc).__name__, "error": msg[:300]}


def _summarize(results: Any, expected: list[Any], bad: set[int]) -> dict[str, Any]:
    """How many of the innocent items got their right value; what the bad items got instead."""
    results = list(results)
    out: dict[str, Any] = {"n_results": len(results)}
    good = sum(
        1
        for i, (r, e) in enumerate(zip(results, expected))
        if i not in bad and not isinstance(r, BaseException) and r == e
    )
    out["innocent_ok"] = good
    out["innocent_total"] = len(expected) - len(bad)
    for i in sorted(bad):
        if i < len(results) and isinstance(results[i], BaseException):
            out.update(_describe(results[i]))
            break
    return out


def _reuse(system: Probed) -> None:
    t0 = time.monotonic()
    try:
        ok = list(system.map(double, range(8))) == [2 * i for i in range(8)]
        _emit(event="reuse", usable=ok, elapsed=time.monotonic() - t0)
    except BaseException as exc:
        _emit(event="reuse", usable=False, elapsed=time.monotonic() - t0, **_describe(exc))


def _probe_crash(system: Probed, fn: Any) -> None:
    t0 = time.monotonic()
    try:
        results = system.map(fn, range(N_TASKS))
        _emit(
            event="call",
            status="returned",
            elapsed=time.monotonic() - t0,
            **_summarize(results, [2 * i for i in range(N_TASKS)], {CRASH_ITEM}),
        )
    except BaseException as exc:
        _emit(event="call", status="raised", elapsed=time.monotonic() - t0, **_describe(exc))
    _reuse(system)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _probe_timeout(system: Probed) -> None:
    d = _scratch()
    items = list(range(4))
    t0 = time.monotonic()
    try:
        results = system.map_timeout(slow_or_quick, items, TIMEOUT_S)
        _emit(
            event="call",
            status="returned",
            elapsed=time.monotonic() - t0,
            **_summarize(results, [2 * i for i in items], {0}),
        )
    except BaseException as exc:
        _emit(event="call", status="raised", elapsed=time.monotonic() - t0, **_describe(exc))
    # Was the slow task cut? Watch (before any pool shutdown, which could cut it) until it
    # finishes, reports an interruption, or its worker dies.
    started = d / "slow.started"
    if not started.exists():
        _emit(event="cut", verdict="never started")
        return
    pid_s, start_s = started.read_text().split()
    pid, start = int(pid_s), float(start_s)
    deadline = start + SLOW_TASK_S + CUT_WATCH_MARGIN_S
    verdict = "unknown"
    while time.time() < deadline:
        if (d / "slow.done").exists():
            verdict = "kept running"
            break
        if (d / "slow.interrupted").exists():
            verdict = "cut (interrupted in its worker)"
            break
        if not _pid_alive(pid):
            verdict = "cut (worker killed)"
            break
        time.sleep(POLL_S)
    _emit(event="cut", verdict=verdict, after=time.time() - start)


def _probe_sigint(system: Probed) -> None:
    t0 = time.monotonic()
    try:
        system.map(sleepy, range(SIGINT_TASKS))
        _emit(event="call", status="returned", elapsed=time.monotonic() - t0)
    except KeyboardInterrupt:
        _emit(event="call", status="KeyboardInterrupt", elapsed=time.monotonic() - t0)
        raise  # like a script at the prompt: the interpreter exits through its atexit hooks


def _probe_simple(system: Probed, which: str) -> None:
    import threading

    t0 = time.monotonic()
    try:
        if which == "lambda":
            results = system.map(lambda x: x + 1, range(10))
            expected = [x + 1 for x in range(10)]
        else:
            results = system.map(hold_lock, [threading.Lock() for _ in range(4)])
            expected = [1] * 4
        results = list(results)
        errors = [r for r in results if isinstance(r, BaseException)]
        _emit(
            event="call",
            status="returned",
            elapsed=time.monotonic() - t0,
            correct=results == expected,
            n_errors=len(errors),
            **(_describe(errors[0]) if errors else {}),
        )
    except BaseException as exc:
        _emit(event="call", status="raised", elapsed=time.monotonic() - t0, **_describe(exc))


def child(probe: str, system_key: str) -> None:
    # Python's own Ctrl-C handler, as a script started from a terminal has it: launched from a
    # background job of a non-interactive shell (``make bench &``, nohup), the child would
    # inherit SIGINT ignored, and every system would "hang" in the sigint probe.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _emit(event="begin", pid=os.getpid())
    with SYSTEMS[system_key]() as system:
        if probe in ("exit", "sigkill", "segv"):
            fn = {"exit": crash_exit, "sigkill": crash_sigkill, "segv": crash_segv}[probe]
            _probe_crash(system, fn)
        elif probe == "timeout":
            _probe_timeout(system)
        elif probe == "sigint":
            _probe_sigint(system)
        else:
            _probe_simple(system, probe)
    _emit(event="end")


# --------------------------------------------------------------------------------------------
# The parent: launches each child, enforces the limit, signals, inspects what is left.


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _group_members(pgid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and _pid_alive(int(entry)):
                    out.add(int(entry))
            except OSError:
                pass
    return out


def _kill_all(pgid: int, pids: set[int]) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def _maybe_ours(name: str, pids: set[int]) -> bool:
    """Whether a new /dev/shm entry may come from the probe, not from another user of the machine.

    Names that carry a pid (``allcores-<pid>-...``, ``joblib_memmapping_folder_<pid>_...``) are
    ours only with one of our pids; names without a number that could be a pid are counted.
    """
    numbers = [int(t) for t in re.findall(r"\d+", name) if len(t) >= 3]
    return not numbers or any(n in pids for n in numbers)


def run_probe(probe: str, system_key: str, limit: float) -> dict[str, Any]:
    """Run one probe in a fresh process; return its events plus what the parent observed."""
    with tempfile.TemporaryDirectory(prefix="allcores-rel-") as tmp:
        d = Path(tmp)
        env = dict(os.environ, **{ENV_DIR: tmp})
        shm_before = _shm()
        cmd = [sys.executable, os.path.abspath(__file__), "--child", probe, system_key]
        with open(d / "stderr.txt", "w") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True,
            )  # fmt: skip
        seen: set[int] = set()
        observed: dict[str, Any] = {"probe": probe, "system": SYSTEMS[system_key].label}
        hung = False
        if probe == "sigint":
            # Ctrl-C once the map is truly under way: a task has started in a worker.
            while proc.poll() is None and time.monotonic() - t0 < limit:
                if any(d.glob("sleepy.*.started")):
                    break
                time.sleep(POLL_S)
            seen |= _descendants(proc.pid)
            if proc.poll() is None:
                t_sig = time.monotonic()
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=limit)
                    observed["time_back"] = time.monotonic() - t_sig
                except subprocess.TimeoutExpired:
                    hung = True
                if not hung:
                    left = {p for p in seen | _group_members(proc.pid) if _pid_alive(p)}
                    observed["left_at_exit"] = len(left)
                    time.sleep(LEFTOVER_GRACE_S)
                    left = {p for p in left | _group_members(proc.pid) if _pid_alive(p)}
                    observed["left_after_grace"] = len(left)
                    new = sorted(_shm() - shm_before)
                    ours = seen | {proc.pid}
                    observed["shm_new"] = [n for n in new if _maybe_ours(n, ours)]
                    observed["shm_foreign"] = [n for n in new if not _maybe_ours(n, ours)]
        else:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    seen |= _descendants(proc.pid)
                    if time.monotonic() - t0 > limit:
                        hung = True
                        break
        observed["wall"] = time.monotonic() - t0
        seen |= _descendants(proc.pid)
        _kill_all(proc.pid, seen)
        proc.wait()
        observed["hung"] = hung
        observed["limit"] = limit
        observed["returncode"] = proc.returncode
        events_path = d / "events.jsonl"
        events = (
            [json.loads(line) for line in events_path.read_text().splitlines() if line]
            if events_path.exists()
            else []
        )
        observed["events"] = events
        observed["stderr_tail"] = (d / "stderr.txt").read_text()[-600:]
        return observed


def _err(ev: dict[str, Any], chars: int = 90) -> str:
    text = ev.get("error_type", "")
    if ev.get("error"):
        text += f": {ev['error'][:chars]}"
    return text


def render_cell(obs: dict[str, Any]) -> str:
    """One short sentence per (probe, system) from the events the child wrote."""
    probe = obs["probe"]
    events = {e["event"]: e for e in obs["events"]}
    call, limit = events.get("call"), obs["limit"]
    parts: list[str] = []
    if probe in ("exit", "sigkill", "segv"):
        if call is None:
            parts.append(f"hangs (killed after {limit:.0f} s)" if obs["hung"] else "no result")
        elif call["status"] == "raised":
            parts.append(
                f"raises {call['error_type']} in {call['elapsed']:.2f} s; whole call fails"
            )
        else:
            parts.append(
                f"returns in {call['elapsed']:.2f} s with {call['innocent_ok']}/"
                f"{call['innocent_total']} other results; failed item: {_err(call, 130) or '?'}"
            )
        reuse = events.get("reuse")
        if reuse is not None:
            parts.append("pool usable after" if reuse["usable"] else "pool unusable after")
        elif call is not None and obs["hung"]:
            parts.append(f"pool reuse hangs (killed after {limit:.0f} s)")
    elif probe == "timeout":
        if call is None:
            parts.append(f"hangs (killed after {limit:.0f} s)" if obs["hung"] else "no result")
        else:
            how = "returns" if call["status"] == "returned" else f"raises {call['error_type']}"
            parts.append(f"{how} after {call['elapsed']:.1f} s")
            if call["status"] == "returned":
                parts.append(f"{call['innocent_ok']}/{call['innocent_total']} others finish")
        cut = events.get("cut")
        if cut is not None:
            after = f" {cut['after']:.1f} s after it started" if "after" in cut else ""
            parts.append(f"task {cut['verdict']}{after}")
        elif obs["hung"] and call is not None:
            parts.append(f"killed after {limit:.0f} s while watching the task")
    elif probe == "sigint":
        if "time_back" not in obs:
            parts.append(
                f"hangs (killed after {limit:.0f} s)" if obs["hung"] else "exited before SIGINT"
            )
        else:
            ki = " (KeyboardInterrupt)" if call and call["status"] == "KeyboardInterrupt" else ""
            parts.append(f"back in {obs['time_back']:.2f} s{ki}")
            parts.append(
                f"processes left: {obs['left_at_exit']} at exit, {obs['left_after_grace']} "
                f"{LEFTOVER_GRACE_S:.0f} s later"
            )
            parts.append(f"/dev/shm +{len(obs['shm_new'])}")
    else:
        if call is None:
            parts.append(f"hangs (killed after {limit:.0f} s)" if obs["hung"] else "no result")
        elif call["status"] == "raised":
            parts.append(f"raises {_err(call, 50)}")
        elif call.get("correct"):
            parts.append("works")
        elif call.get("n_errors"):
            n = 10 if probe == "lambda" else 4
            parts.append(f"{call['n_errors']}/{n} items fail: {_err(call, 70)}")
        else:
            parts.append("returns wrong results")
    return "; ".join(parts).replace("|", "/")


PROBE_TITLES = {
    "exit": "a task calls `os._exit(1)` in a 100-task map",
    "sigkill": "a task SIGKILLs its own worker in a 100-task map",
    "segv": "a task segfaults in a 100-task map",
    "timeout": "a 10 s task under timeout=1 (+3 quick tasks)",
    "sigint": "SIGINT to the process group during a map",
    "lambda": "a lambda as the function",
    "lock": "a `threading.Lock` as an argument",
}


def render_table(observations: list[dict[str, Any]], probes: list[str], labels: list[str]) -> str:
    cells = {(o["probe"], o["system"]): render_cell(o) for o in observations}
    lines = ["| probe | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for probe in probes:
        row = [cells.get((probe, label), "-") for label in labels]
        lines.append(f"| {PROBE_TITLES[probe]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", metavar="NAMES", help=f"comma-separated, of {PROBES}")
    parser.add_argument("--systems", metavar="NAMES", help=f"comma-separated, of {tuple(SYSTEMS)}")
    parser.add_argument("--limit", type=float, help="override every probe's hard limit (s)")
    parser.add_argument("--json", metavar="PATH", help="also write every observation here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each child's stderr")
    args = parser.parse_args(argv)
    probes = _harness.pick(args.probes, PROBES, "probe")
    aliases = {cls.label.lower(): key for key, cls in SYSTEMS.items()}
    requested = args.systems and ",".join(
        aliases.get(s.strip().lower(), s.strip()) for s in args.systems.split(",")
    )
    keys = _harness.pick(requested, SYSTEMS, "system")

    print(_harness.machine_line())
    observations = []
    for probe in probes:
        for key in keys:
            obs = run_probe(probe, key, args.limit or LIMITS[probe])
            observations.append(obs)
            print(f"  {probe:8} {obs['system']:9} {render_cell(obs)}", flush=True)
            if args.verbose and obs["stderr_tail"].strip():
                print("    stderr: " + obs["stderr_tail"].strip().replace("\n", "\n    "))
    labels = [SYSTEMS[k].label for k in keys]
    print(f"\n## Reliability ({WORKERS} workers; allcores with on_error='collect')\n")
    print(render_table(observations, probes, labels))
    if args.json:
        _harness.write_json(
            args.json, {"machine": _harness.machine_info(), "observations": observations}
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
