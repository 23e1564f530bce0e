"""The Dask backend: chunks as ``distributed`` tasks, each run by an allcores pool local to the
Dask worker (isolated mode).

Why isolated mode: Dask cannot stop a running task (``Future.cancel`` only forgets it), and a
task that kills its worker makes the scheduler retry it on other workers and blame the tasks
queued beside it (``KilledWorker``). Running the chunk's items in a local allcores pool turns
both into local, solved problems: a per-item timeout kills one local process, a crash kills one
local process, the local engine attributes either to its one item and replaces the process,
and the Dask worker never dies. The alternative, restarting the whole Dask worker under its
nanny on a timeout, takes about a second, kills every other task on that worker and is counted
by the scheduler towards ``KilledWorker``; see docs/cluster.md for the measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from allcores.backends import _remote
from allcores.backends._base import ClusterBackend, Outcome

# How long to wait for a cluster to have at least one worker before giving up.
WAIT_FOR_WORKERS_SECONDS = 60.0


def _dask_chunk(call_id: str, fn_blob: bytes, items_blob: bytes, mode: int,
                timeout: float | None, start: int, shares: dict[str, Any]) -> bytes:
    """The task: find this worker's thread count and address, run the chunk isolated."""
    from distributed import get_worker

    worker = get_worker()
    return _remote.run_isolated(call_id, fn_blob, items_blob, mode, timeout, start,
                                worker.state.nthreads, worker.address, shares)


def _plugin() -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class LocalPoolPlugin(WorkerPlugin):
        """Stops the worker's local allcores pool when the Dask worker closes (its manager
        thread would otherwise hold the worker's exit until the nanny kills it)."""

        name = "allcores-local-pool"

        def teardown(self, worker: Any) -> None:
            from distributed.core import Status

            # Every driver that connects registers this plugin again, and Dask tears the old
            # registration down when a new one replaces it: the worker is still running then,
            # and its local pool (with other drivers' chunks on it) must stay.
            if worker.status == Status.running:
                return
            _remote.shutdown_local_pool()

    return LocalPoolPlugin()


class DaskBackend(ClusterBackend):
    """Chunks on a Dask cluster: a live ``distributed.Client``, a scheduler address, or a
    ``LocalCluster`` started here (``workers`` processes of one thread) and closed at exit."""

    name = "dask"
    isolated = True

    def __init__(self, address: str | None = None, client: Any = None,
                 workers: int | None = None) -> None:
        try:
            import distributed
        except ImportError as exc:
            raise ImportError(
                "backend='dask' needs Dask's distributed scheduler: pip install 'allcores[dask]'"
            ) from exc
        self._cluster = None
        if client is None:
            if address is None:
                from allcores._engine.cpu import cpu_count

                # Loopback only: a cluster started for one user's call must not listen on the
                # network. Dashboard off (it needs bokeh); the scheduler's HTTP endpoints on a
                # free loopback port, not 8787, which another cluster may hold.
                self._cluster = distributed.LocalCluster(
                    n_workers=workers or cpu_count(), threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address="127.0.0.1:0",
                    scheduler_kwargs={"dashboard": False},
                )
                client = distributed.Client(self._cluster, set_as_default=False)
            else:
                client = distributed.Client(address, set_as_default=False)
            self._own()
        self.client = client
        self.address = str(client.scheduler.address)
        client.register_plugin(_plugin(), name="allcores-local-pool")
        self._distributed = distributed

    def slots(self) -> int:
        info = self.client.scheduler_info()
        if not info.get("workers"):
            self.client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_SECONDS)
            info = self.client.scheduler_info()
        return max(1, sum(w.get("nthreads", 1) for w in info["workers"].values()))

    def put(self, value: Any) -> Any:
        # hash=False: a fresh key per call, so two calls never share (or free) one another's.
        return self.client.scatter(value, hash=False, broadcast=False)

    def submit(self, key: str, call_id: str, fn_ref: Any, items_blob: bytes, mode: int,
               timeout: float | None, start: int, shares: dict[str, Any]) -> Any:
        # retries=0 and pure=False with our own key: Dask neither retries nor dedupes a chunk.
        return self.client.submit(_dask_chunk, call_id, fn_ref, items_blob, mode, timeout,
                                  start, shares, key=key, pure=False, retries=0)

    def on_done(self, handle: Any, callback: Callable[[], None]) -> None:
        handle.add_done_callback(lambda _future: callback())

    def outcome(self, handle: Any) -> Outcome:
        status = handle.status
        if status == "finished":
            return Outcome(answer=handle.result())
        if status == "cancelled":
            return Outcome(lost="the task was cancelled on the cluster")
        error = handle.exception()
        if isinstance(error, _remote.LostChunk) or type(error).__name__ == "LostChunk":
            return Outcome(lost=str(error))
        from distributed.scheduler import KilledWorker

        if isinstance(error, KilledWorker):
            return Outcome(crashed=f"the Dask worker itself died ({error})")
        return Outcome(error=error)

    def cancel(self, handles: Sequence[Any], call_id: str) -> None:
        if handles:
            self.client.cancel(list(handles), force=True)
        # Dask's cancel forgets a running task but cannot stop it: each worker kills its
        # local processes that run this call's items.
        try:
            self.client.run(_remote.abort, call_id)
        except Exception:
            pass  # a worker that is gone runs nothing

    def forget(self, ref: Any) -> None:
        try:
            ref.release()
        except Exception:
            pass

    def _release(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
