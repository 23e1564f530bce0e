"""The Ray backend: chunks as Ray tasks run in the Ray worker itself.

Ray can stop a running task (``ray.cancel(force=True)`` kills its worker process), so timeouts
are enforced by the driver: a timed item runs alone in its task, and past its deadline the task
is cancelled with force. A task whose worker dies fails with Ray's ``WorkerCrashedError``; the
driver re-runs the chunk item by item to find the culprit, as the local engine does.
"""

from __future__ import annotations

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
        if not ray.is_initialized():
            if address is None:
                from allcores._engine.cpu import cpu_count

                # address="local": a new instance, even where a `ray start` left its address
                # behind for ray.init() to find (it would connect there instead).
                ray.init(address="local", num_cpus=workers or cpu_count(),
                         include_dashboard=False,
                         log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self._own()
        self.address = address or "local"
        # max_retries=0, retry_exceptions=False: Ray never re-runs a chunk by itself; allcores'
        # RetryPolicy decides. One CPU per task, as a process pool's one process per item.
        self._task = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(
            _remote.run_inline
        )
        # Timed items run as a streaming task that reports its start first (see started_at).
        self._timed_task = ray.remote(
            num_cpus=1, max_retries=0, retry_exceptions=False, num_returns="streaming"
        )(_remote.run_inline_timed)
        self._starts: dict[Any, float] = {}

    def slots(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, key: str, call_id: str, fn_ref: Any, items_blob: bytes, mode: int,
               timeout: float | None, start: int, shares: dict[str, Any]) -> Any:
        task = self._task if timeout is None else self._timed_task
        return task.options(name=key).remote(call_id, fn_ref, items_blob, mode, "", shares)

    def on_done(self, handle: Any, callback: Callable[[], None]) -> None:
        ref = handle.completed() if self._streaming(handle) else handle
        ref.future().add_done_callback(lambda _future: callback())

    def _streaming(self, handle: Any) -> bool:
        return isinstance(handle, self._ray.ObjectRefGenerator)

    def started_at(self, handle: Any) -> float | None:
        if not self._streaming(handle):
            return float("-inf")
        if handle not in self._starts:
            ready, _ = self._ray.wait([handle], timeout=0)
            if not ready:
                return None
            self._starts[handle] = self._ray.get(next(handle))
        return self._starts[handle]

    def outcome(self, handle: Any) -> Outcome:
        exceptions = self._ray.exceptions
        try:
            if self._streaming(handle):
                if self._starts.pop(handle, None) is None:
                    self._ray.get(next(handle))  # the start marker
                return Outcome(answer=self._ray.get(next(handle)))
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
        except StopIteration:
            return Outcome(crashed="its worker ended the task without an answer")

    def cancel(self, handles: Sequence[Any], call_id: str) -> None:
        for ref in handles:
            self._starts.pop(ref, None)
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass  # already finished
        if handles:
            # Block until Ray reports them ended, so nothing of them is still running when the
            # call returns (a force-cancel kills the worker process asynchronously).
            refs = [h.completed() if self._streaming(h) else h for h in handles]
            self._ray.wait(refs, num_returns=len(refs), timeout=CANCEL_CONFIRM_SECONDS)

    # forget(): nothing to do; Ray frees a stored value once no reference to it is left, and
    # the call drops its reference when it ends.

    def _release(self) -> None:
        self._ray.shutdown()


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"its worker process exited unexpectedly ({type(exc).__name__}: {first})"
