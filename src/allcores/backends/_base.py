"""The small interface a cluster engine implements, and what a finished chunk task tells.

A backend only moves chunks: it submits one as a task under a key that is unique per attempt,
waits for any of several to finish, tells how each ended, and cancels. Every decision (chunk
sizes, retries, error policy, ordering, timeouts' consequences) is the driver's
(``_driver.py``), so both engines behave the same.
"""

from __future__ import annotations

import abc
import atexit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class ChunkTask:
    """One chunk on its way: what the driver sent and what the engine gave back for it."""

    key: str  # unique per attempt: the engine must never dedupe or cache a re-run
    handle: Any  # the engine's future / object ref
    chunk: Any  # the Job's Chunk
    deadline: float | None = None  # monotonic; only where the driver enforces timeouts


@dataclass(frozen=True)
class Outcome:
    """How a chunk task ended.

    Exactly one of the fields is set: ``answer`` (the pickled answer of ``_remote``),
    ``crashed`` (the engine's worker died under it: a plain-words cause), ``lost`` (the task
    was dropped without fault of its items: run it again as it was) or ``error`` (the engine
    itself failed the task: raised to the caller).
    """

    answer: bytes | None = None
    crashed: str | None = None
    lost: str | None = None
    error: BaseException | None = None


class ClusterBackend(abc.ABC):
    """A connection to one cluster engine.

    Attributes:
        name: "dask" or "ray".
        isolated: True when chunks run in an allcores pool local to each cluster worker, which
            then enforces timeouts and attributes crashes itself; False when the driver
            enforces timeouts by cancelling tasks and re-runs crashed chunks item by item.
        address: where the cluster's scheduler is, for messages.
    """

    name: str = ""
    isolated: bool = False
    address: str = ""

    @abc.abstractmethod
    def slots(self) -> int:
        """How many chunks the cluster can run at once (its worker threads / CPUs)."""

    @abc.abstractmethod
    def put(self, value: Any) -> Any:
        """Place ``value`` in the engine's store once; the reference is passed to tasks."""

    @abc.abstractmethod
    def submit(self, key: str, call_id: str, fn_ref: Any, items_blob: bytes, mode: int,
               timeout: float | None, start: int, shares: dict[str, Any]) -> Any:
        """Start one chunk task; returns the engine's handle for it. ``timeout`` is the
        per-item limit (the worker enforces it when ``isolated``); ``shares`` maps the tokens
        of the shares in the items to their references in the store (:meth:`put`)."""

    @abc.abstractmethod
    def on_done(self, handle: Any, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from any thread) once the task ``handle`` has ended."""

    @abc.abstractmethod
    def outcome(self, handle: Any) -> Outcome:
        """How a finished task ended."""

    @abc.abstractmethod
    def cancel(self, handles: Sequence[Any], call_id: str) -> None:
        """Stop these tasks now, running ones included; nothing of them keeps running."""

    def started_at(self, handle: Any) -> float | None:
        """When (``time.time()``) the task ``handle`` started running, None if it has not yet.

        Only asked of backends the driver enforces timeouts for (``isolated`` False), and only
        once a timed task's first deadline (from its submission) has passed, so a task that
        waited for a worker to start is not stopped for time it never ran.
        """
        return float("-inf")

    def forget(self, ref: Any) -> None:  # noqa: B027 - optional
        """Drop a stored value (the call is over)."""

    # Whether this backend started (or connected) what it must close at exit: see _own().
    _owned: bool = False

    def _own(self) -> None:
        """This backend started its cluster or its connection: close them at exit."""
        self._owned = True
        atexit.register(self.close)

    def close(self) -> None:
        """Release what this backend started (a local cluster, its own connection); a user's
        cluster, or a connection the caller made, stays up. Idempotent."""
        if not self._owned:
            return
        self._owned = False
        try:
            atexit.unregister(self.close)
        except Exception:
            pass
        self._release()

    def _release(self) -> None:  # noqa: B027 - optional
        """Stop what :meth:`_own` registered (called once, by :meth:`close`)."""
