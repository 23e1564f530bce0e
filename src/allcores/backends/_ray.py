"""The Ray backend: chunks as Ray tasks run in the Ray worker itself.

Ray can stop a running task (``ray.cancel(force=True)`` kills its worker process), so timeouts
are enforced by the driver: a timed item runs alone in its task, and past its deadline the task
is cancelled with force. A task whose worker dies fails with Ray's ``WorkerCrashedError``; the
driver re-runs the chunk item by item to find the culprit, as the local engine does.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Sequence
from typing import Any

from allcores.backends import _remote
from allcores.backends._base import ClusterBackend, Outcome

# After ray.cancel(force=True), how long to wait for the cancelled tasks to be reported gone.
CANCEL_CONFIRM_SECONDS = 10.0


class RayBackend(ClusterBackend):
    """Chunks on a Ray cluster: the one this process is connected to, ``address`` (``"auto"``
    or ``"ray://..."``/``"host:port"``), or a local one started with ``num_cpus=workers`` and
    shut down at exit."""

    name = "ray"
    isolated = False

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("backend='ray' needs Ray: pip install 'allcores[ray]'") from exc
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            if address is None:
                from allcores._engine.cpu import cpu_count

                ray.init(num_cpus=workers or cpu_count(), include_dashboard=False,
                         log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self._owned = True
            atexit.register(self.close)
        self.address = address or "local"
        # max_retries=0, retry_exceptions=False: Ray never re-runs a chunk by itself; allcores'
        # RetryPolicy decides. One CPU per task, as a process pool's one process per item.
        self._task = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(
            _remote.run_inline
        )

    def slots(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, key: str, call_id: str, fn_ref: Any, items_blob: bytes, mode: int,
               timeout: float | None, start: int) -> Any:
        return self._task.options(name=key).remote(call_id, fn_ref, items_blob, mode, "")

    def on_done(self, handle: Any, callback: Callable[[], None]) -> None:
        handle.future().add_done_callback(lambda _future: callback())

    def outcome(self, handle: Any) -> Outcome:
        exceptions = self._ray.exceptions
        try:
            return Outcome(answer=self._ray.get(handle))
        except exceptions.TaskCancelledError:
            return Outcome(lost="the task was cancelled")
        except exceptions.OutOfMemoryError as exc:
            return Outcome(crashed=f"Ray's memory monitor killed its worker ({exc})")
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError,
                exceptions.ObjectLostError) as exc:
            return Outcome(crashed=_cause(exc))
        except exceptions.RayTaskError as exc:
            return Outcome(error=exc)

    def cancel(self, handles: Sequence[Any], call_id: str) -> None:
        for ref in handles:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass  # already finished
        if handles:
            # Block until Ray reports them ended, so nothing of them is still running when the
            # call returns (a force-cancel kills the worker process asynchronously).
            self._ray.wait(list(handles), num_returns=len(handles),
                           timeout=CANCEL_CONFIRM_SECONDS)

    # forget(): nothing to do; Ray frees a stored value once no reference to it is left, and
    # the call drops its reference when it ends.

    def close(self) -> None:
        if not self._owned:
            return
        self._owned = False
        try:
            atexit.unregister(self.close)
        except Exception:
            pass
        self._ray.shutdown()


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"its worker process exited unexpectedly ({type(exc).__name__}: {first})"
