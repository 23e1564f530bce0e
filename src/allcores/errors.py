"""The exceptions allcores raises, one meaning per class.

Where the standard library already has a class for the same meaning, ours subclasses it, so
``except`` clauses written for ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` keep working::

    Exception
    └── AllcoresError                       base of everything allcores raises itself
        ├── PoolClosedError                 you closed it: submit after close()/shutdown()
        │                                   (also ValueError like multiprocessing.Pool, and
        │                                   RuntimeError like ProcessPoolExecutor)
        ├── WorkerCrashedError              it broke under you: a worker process died while
        │                                   running an item (also BrokenProcessPool)
        ├── TaskTimeoutError                an item ran past its timeout= and was stopped
        │                                   (also TimeoutError)
        ├── ForeignObjectError              a shared-memory segment, named semaphore or
        │                                   limit() folder to reopen is not this user's own
        │                                   private object (also PermissionError)
        ├── SerializationError              something could not cross the process boundary
        │   ├── ArgumentPicklingError       an argument (or the function) failed to pickle
        │   │                               (also pickle.PicklingError and TypeError)
        │   └── ResultPicklingError         a result failed to pickle in the worker
        │                                   (also pickle.PicklingError and TypeError)
        └── InternalError                   allcores itself is wrong: a bug to report

A task's own exception is never wrapped: it is re-raised with its original type, the worker's
traceback attached as ``__cause__`` (a :class:`RemoteTraceback`), and a note naming the item.
"""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "AllcoresError",
    "ArgumentPicklingError",
    "ForeignObjectError",
    "InternalError",
    "PoolClosedError",
    "RemoteTraceback",
    "ResultPicklingError",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerCrashedError",
]


class AllcoresError(Exception):
    """Base class of every exception that allcores raises itself."""


class PoolClosedError(AllcoresError, ValueError, RuntimeError):
    """Work was submitted to a pool after ``close()``, ``terminate()`` or ``shutdown()``."""


class WorkerCrashedError(AllcoresError, BrokenProcessPool):
    """A worker process died (segfault, ``os._exit``, SIGKILL, OOM killer) running an item.

    Only the item that was running fails; the pool replaces the worker and goes on.

    Attributes:
        worker_id: the pool's number for the worker (0-based).
        pid: the dead process's id.
        exitcode: its exit status; negative for a signal, as in ``Process.exitcode``.
        signal_name: ``"SIGKILL"`` and the like, or ``None`` when it exited by itself.
        cause: the likely cause in plain words.
        item_repr: a short repr of the item that was running.
    """

    def __init__(
        self,
        message: str,
        *,
        worker_id: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        signal_name: str | None = None,
        cause: str = "",
        item_repr: str = "",
    ) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = signal_name
        self.cause = cause
        self.item_repr = item_repr

    def __reduce__(self):  # keep the attributes when the error itself is pickled
        return (
            _rebuild_crash,
            (
                self.args[0] if self.args else "",
                self.worker_id,
                self.pid,
                self.exitcode,
                self.signal_name,
                self.cause,
                self.item_repr,
            ),
        )


def _rebuild_crash(message, worker_id, pid, exitcode, signal_name, cause, item_repr):
    return WorkerCrashedError(
        message,
        worker_id=worker_id,
        pid=pid,
        exitcode=exitcode,
        signal_name=signal_name,
        cause=cause,
        item_repr=item_repr,
    )


class TaskTimeoutError(AllcoresError, TimeoutError):
    """An item ran longer than its ``timeout=``; its worker was stopped and replaced."""


class ForeignObjectError(AllcoresError, PermissionError):
    """A named object allcores was about to reopen is not the one it made: refused, never read.

    Raised when a shared-memory segment, a named semaphore or a ``limit()`` folder belongs to
    another user, lets other users in (group/other permission bits), is a symbolic link, or
    (sync objects, shared arrays) does not carry the secret of the handle that names it. The
    usual cause is a name reused after its owner released it (another user or container
    recreated it, or a recycled pid); see docs/security.md.
    """


class SerializationError(AllcoresError):
    """Something could not cross the process boundary."""


class ArgumentPicklingError(SerializationError, pickle.PicklingError, TypeError):
    """An argument of a task (or the task's function) could not be pickled.

    It is a ``TypeError`` and a ``pickle.PicklingError`` too, the two types the standard pools
    raise for the same mistake.
    """


class ResultPicklingError(SerializationError, pickle.PicklingError, TypeError):
    """A task's return value could not be pickled in the worker to travel back."""


class InternalError(AllcoresError):
    """allcores itself is wrong (an engine invariant broke): not your code, please report it.

    The calls that were running fail with it, so none of them hangs; the message says what
    broke, and ``__cause__`` holds the original exception where there is one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(
            f"allcores internal error: {message}. This is a bug in allcores, not in your code; "
            "please report it with this traceback."
        )


class RemoteTraceback(Exception):
    """The worker-side traceback of a task's exception, attached as its ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
