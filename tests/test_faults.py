"""The crash matrix: every way a task can fail, the exact error expected, and that every other
result still arrives and the pool stays usable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest

import allcores
from _tasks import (
    Unpicklable,
    UnpicklableInWorker,
    allocate_on,
    double,
    exit_on,
    fail_on,
    grow,
    hang_on,
    identity,
    limit_memory,
    return_lock,
    segfault_on,
    sigkill_on,
    spin,
    timed,
)
from allcores.errors import (
    ArgumentPicklingError,
    ResultPicklingError,
    TaskTimeoutError,
    WorkerCrashedError,
)

pytestmark = pytest.mark.timeout(60)
BAD = 3
N = 20


def _items_with(bad_value):
    items = list(range(N))
    items[BAD] = bad_value
    return items


# name -> (function, items, pool keywords, call keywords, expected error type, words in message)
MATRIX = {
    "raises": (fail_on, list(range(N)), {}, {}, ValueError, "bad item 3"),
    "argument does not pickle": (identity, _items_with(Unpicklable()), {}, {},
                                 ArgumentPicklingError, "cannot be pickled"),
    "argument does not unpickle": (identity, _items_with(UnpicklableInWorker()), {}, {},
                                   ArgumentPicklingError, "could not be unpickled in the worker"),
    "result does not pickle": (lambda x: return_lock(x) if x == BAD else x, list(range(N)), {}, {},
                               ResultPicklingError, "cannot be pickled"),
    "os._exit": (lambda x: exit_on(x, BAD), list(range(N)), {}, {}, WorkerCrashedError,
                 "exited with status 1"),
    "SIGKILL": (lambda x: sigkill_on(x, BAD), list(range(N)), {}, {}, WorkerCrashedError,
                "SIGKILL"),
    "segfault": (lambda x: segfault_on(x, BAD), list(range(N)), {}, {}, WorkerCrashedError,
                 "segmentation fault"),
    "hangs": (hang_on, list(range(N)), {}, {"timeout": 1}, TaskTimeoutError,
              "ran longer than its timeout"),
    "allocates without bound": (allocate_on, list(range(N)),
                                {"initializer": limit_memory, "initargs": (512 << 20,)}, {},
                                MemoryError, ""),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_crash_matrix(case):
    fn, items, pool_kw, call_kw, error_type, words = MATRIX[case]
    with allcores.Pool(2, **pool_kw) as pool:
        results = pool.map(fn, items, on_error="collect", **call_kw)
        assert len(results) == N
        assert isinstance(results[BAD], error_type), repr(results[BAD])
        assert words in str(results[BAD])
        others = [r for i, r in enumerate(results) if i != BAD]
        assert others == [i for i in range(N) if i != BAD]
        assert [f.index for f in results.failures] == [BAD]
        # fail fast raises the same error type
        with pytest.raises(error_type):
            pool.map(fn, items, **call_kw)
        # and the pool is still usable
        assert pool.map(double, range(10)) == [2 * x for x in range(10)]


def test_crash_error_names_worker_pid_signal_and_item():
    with allcores.Pool(2) as pool:
        results = pool.map(lambda x: sigkill_on(x, 7), range(50), on_error="collect")
    error = results[7]
    assert isinstance(error, BrokenProcessPool)
    assert error.signal_name == "SIGKILL" and error.exitcode == -signal.SIGKILL
    assert error.pid and error.worker_id in (0, 1)
    assert error.item_repr == "7"
    assert f"pid {error.pid}" in str(error)


def test_innocent_items_of_a_crashed_chunk_are_rerun():
    with allcores.Pool(1) as pool:
        results = pool.map(lambda x: exit_on(x, 40), range(100), chunksize=25, on_error="collect")
    assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [40]


def test_skip_policy_leaves_out_failed_items_and_lists_them():
    results = allcores.map(lambda x: exit_on(x, 5), range(10), on_error="skip", workers=2)
    assert results == [i for i in range(10) if i != 5]
    assert len(results.failures) == 1 and results.failures[0].index == 5
    assert isinstance(results.failures[0].error, WorkerCrashedError)


def test_retries_rerun_chosen_exception_types(tmp_path):
    marker = tmp_path / "attempts"

    def flaky(x):
        if x == 2:
            with open(marker, "a") as f:
                f.write("x")
            if marker.read_text() != "xxx":
                raise ConnectionError("try again")
        return x

    results = allcores.map(flaky, range(5), retries=3, retry_on=(ConnectionError,), workers=2)
    assert results == list(range(5))
    assert marker.read_text() == "xxx"
    with pytest.raises(KeyError):  # not in retry_on: raised at once
        allcores.map(lambda x: {}[x], [1], retries=3, retry_on=(ConnectionError,))


def test_timeout_cuts_the_task_and_the_others_finish():
    results = allcores.map(lambda x: hang_on(x, 1), range(6), timeout=1, on_error="collect",
                           workers=2)
    assert isinstance(results[1], TaskTimeoutError) and isinstance(results[1], TimeoutError)
    assert [r for i, r in enumerate(results) if i != 1] == [0, 2, 3, 4, 5]


def test_memory_ceiling_recycles_a_growing_worker():
    with allcores.Pool(1, max_memory=100 << 20) as pool:
        pids = pool.map(grow, range(8), chunksize=1)
    assert len(set(pids)) >= 2  # replaced once it passed 100 MiB


@pytest.mark.timeout(120)
def test_chaos_random_worker_kills_with_retries_lose_nothing():
    stop = threading.Event()
    rnd = random.Random(0)
    kills = 0

    with allcores.Pool(2, retries=3) as pool:
        def killer():
            nonlocal kills
            while not stop.wait(0.2):  # one kill every 200 ms: the workload, not a sync
                pids = pool.worker_pids()
                if pids:
                    try:
                        os.kill(rnd.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            results = pool.map(spin, [10_000 + x % 5000 for x in range(3000)])
        finally:
            stop.set()
            thread.join()
    assert results == [spin(10_000 + x % 5000) for x in range(3000)]
    assert kills >= 1


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import allcores
    from _tasks import announce_then_sleep
    {body}
    """
)


def _run_script(body: str) -> subprocess.Popen:
    code = SCRIPT.format(tests=str(Path(__file__).parent), body=textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("allcores")}


@pytest.mark.parametrize("api", ["map", "pool"])
def test_ctrl_c_returns_at_once_and_leaves_nothing(api):
    shm_before = _shm()
    body = (
        "allcores.map(announce_then_sleep, range(8), workers=2)"
        if api == "map"
        else "with allcores.Pool(2) as p:\n    p.map(announce_then_sleep, range(8))"
    )
    proc = _run_script(body)
    assert proc.stdout.readline().startswith("running")  # a worker is inside a task
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    proc.wait(timeout=5)
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert "KeyboardInterrupt" in stderr
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    assert _shm() <= shm_before


def test_workers_exit_when_the_parent_is_killed():
    proc = _run_script(
        """
        pool = allcores.Pool(2)
        print(*pool.worker_pids(), flush=True)
        pool.map(announce_then_sleep, range(4))
        """
    )
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert proc.stdout.readline().startswith("running")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    proc.stdout.close()
    proc.stderr.close()
    workers = []
    for pid in pids:
        try:
            workers.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"workers outlived their parent: {[p.pid for p in alive]}"


def test_admission_control_holds_back_work_when_memory_is_low():
    """A reserve larger than the machine: memory is always 'low', so work runs one at a time."""
    huge = 1 << 60
    with allcores.Pool(2, memory_reserve=huge) as pool:
        spans = sorted(pool.map(timed, range(6), chunksize=1))
    assert all(end <= nxt_start for (_, end), (nxt_start, _) in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="memory_reserve"):
        allcores.Pool(1, memory_reserve=-5)


def test_machine_memory_is_read_from_whole_lines_of_meminfo():
    """Admission control reads MemAvailable and MemTotal from the raw bytes of /proc/meminfo:
    the same numbers as /proc's own lines, and only a line that starts with the name counts."""
    from allcores._engine.processes import _meminfo_bytes, available_memory

    available, total = available_memory()
    with open("/proc/meminfo") as f:
        lines = dict(line.split(":", 1) for line in f)
    assert total == int(lines["MemTotal"].split()[0]) * 1024
    assert available is not None and 0 < available <= total
    data = b"HugeMemTotal: 1 kB\nMemTotal:   20 kB\nBad: x\n"
    assert _meminfo_bytes(data, b"MemTotal:") == 20 * 1024
    assert _meminfo_bytes(data, b"MemAvailable:") is None
    assert _meminfo_bytes(b"MemTotal: many kB", b"MemTotal:") is None
