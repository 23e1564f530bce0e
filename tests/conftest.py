"""Fixtures every test gets: nothing may outlive a test (processes, threads, shared memory)."""

from __future__ import annotations

import gc
import os
import re
import signal
import sys
import threading

import psutil
import pytest

START_METHODS = ["fork", "spawn", "forkserver"]
# How long a test's leftovers get to exit on their own before they count as leaked.
LEAK_GRACE_SECONDS = 5.0
# Long-lived helpers that multiprocessing and tqdm start once per session, by design.
_INFRASTRUCTURE = ("forkserver", "resource_tracker", "semaphore_tracker")
# What allcores creates; the standard library's own segments are its resource tracker's business.
_SHM_PREFIXES = ("allcores", "sem.allcores")


# Processes of a module-scoped cluster (Dask workers, Ray's GCS and raylet), registered by
# tests/_cluster.py while the cluster is up. Their descendants come and go by the engine's
# design (Ray starts workers on demand; a Dask worker's local allcores pool replaces a process
# that crashed or timed out), so they are the cluster's, not a test's leak; the cluster tests
# check themselves that nothing of theirs still runs there. Processes a test starts itself, and
# everything outside a registered cluster, are checked as before.
CLUSTER_ROOTS: set[int] = set()
# Threads Dask starts once per process on first use and keeps for the process's life, by
# design (module-level executors: one runs future callbacks, one deserializes big messages).
_ENGINE_THREADS = ("Dask-Callback-Thread", "Dask-Offload")


def _under_cluster(proc: psutil.Process) -> bool:
    if not CLUSTER_ROOTS:
        return False
    try:
        return proc.pid in CLUSTER_ROOTS or any(p.pid in CLUSTER_ROOTS for p in proc.parents())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _infrastructure(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    return any(name in cmdline for name in _INFRASTRUCTURE)


_NAME_PID = re.compile(r"allcores-(?:sync-[a-z]+-)?\d+-[0-9a-f]+-(\d+)-")


def _ours(name: str) -> bool:
    """Whether a segment may be this test's: made by this process, or by one no longer running.

    A segment name carries its creator's pid; one of another live process (a second test run on
    the same machine) is not this test's leak.
    """
    # names carry <uid>-<pid namespace>-<pid> (docs/security.md): only the pid says who made
    # it. Elsewhere, numbers past Linux's largest pid (2**22) are not pids (a namespace id, a
    # counter): asking whether such a "process" exists raised OverflowError.
    found = _NAME_PID.search(name)
    if found:
        pids = [int(found.group(1))]
    else:
        pids = [int(n) for n in re.findall(r"\d+", name) if int(n) <= 1 << 22]
    if os.getpid() in pids:
        return True
    if "allcores-sync-w-" in name or "-xsync-x-" in name:
        # A killed worker's private wake semaphore, or the unread item file of a queue whose
        # owner was SIGKILLed: by design both are swept by the next allcores process that waits
        # on anything (docs/sync.md, "Lifetime"), not by their test. (Another test run on this
        # machine makes such files; counting them failed unrelated tests here.)
        return False
    return not pids or not any(psutil.pid_exists(p) for p in pids)


def _shm_entries() -> set[str]:
    try:
        entries = {n for n in os.listdir("/dev/shm") if n.startswith(_SHM_PREFIXES)}
    except OSError:
        return set()
    # allcores.sync gives each thread one private wake semaphore for the life of the process;
    # the main thread's is made by the first test that waits on a primitive, and is no leak.
    resources = sys.modules.get("allcores.sync._resources")
    me = getattr(getattr(resources, "_me", None), "name", None)
    if me:
        entries.discard("sem." + me[1:])
    return entries


def _stop_default_pool() -> None:
    oneliners = sys.modules.get("allcores._oneliners")
    if oneliners is not None:
        oneliners.shutdown()



def pytest_configure(config) -> None:
    """Give the suite the Ctrl-C a terminal gives, however it was started.

    A command started in the background by a non-interactive shell (``make test &``, some CI
    runners) inherits SIGINT *ignored*; Python then installs no KeyboardInterrupt handler, and
    the children the suite starts inherit the ignore too, so every test of a real Ctrl-C would
    fail for a reason that is not allcores'. Python's own handler is put back here; a handled
    signal returns to its default across ``exec``, so subprocesses get a real Ctrl-C as well.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves a child process, a thread or a shared-memory segment behind.

    The one leak check of the suite: shared-memory and sync tests rely on it too.
    """
    threads_before = set(threading.enumerate())
    shm_before = _shm_entries()
    # Processes already there (a module-scoped pool's workers) are not this test's leak.
    children_before = {c.pid for c in psutil.Process().children(recursive=True)}
    yield
    _stop_default_pool()
    gc.collect()  # objects that own segments free them when collected
    me = psutil.Process()
    children = [
        c
        for c in me.children(recursive=True)
        if c.pid not in children_before and not _infrastructure(c) and not _under_cluster(c)
    ]
    _, alive = psutil.wait_procs(children, timeout=LEAK_GRACE_SECONDS)
    leaked_threads = []
    for thread in set(threading.enumerate()) - threads_before:
        if type(thread).__name__ == "TMonitor":  # tqdm's monitor, one per session
            continue
        if thread.name.startswith(_ENGINE_THREADS):
            continue
        thread.join(LEAK_GRACE_SECONDS)
        if thread.is_alive():
            leaked_threads.append(thread.name)
    leaked_shm = {n for n in _shm_entries() - shm_before if _ours(n)}
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    problems = []
    if alive:
        problems.append(f"child processes left running: {[p.pid for p in alive]}")
    if leaked_threads:
        problems.append(f"threads left running: {leaked_threads}")
    if leaked_shm:
        problems.append(f"shared memory left in /dev/shm: {sorted(leaked_shm)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(params=START_METHODS)
def start_method(request) -> str:
    return request.param
