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
        │                                   (also multiprocessing.pool.MaybeEncodingError,
        │                                   pickle.PicklingError and TypeError)
        └── InternalError                   allcores itself is wrong: a bug to report

A task's own exception is never wrapped: it is re-raised with its original type, the worker's
traceback attached as ``__cause__`` (a :class:`RemoteTraceback`, which is also the standard
pools' remote traceback class), and a note naming the item.

Pickling errors keep the type the standard pools raise: when pickling an argument raises, the
caller gets an instance of that exception's type (an ``ArgumentPicklingError`` when it is a
``TypeError`` or ``PicklingError``, else the original exception with allcores' hint as a note).
"""

from __future__ import annotations

import pickle
from concurrent.futures import TimeoutError as _FuturesTimeoutError
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.process import _RemoteTraceback as _FuturesRemoteTraceback
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from multiprocessing.pool import RemoteTraceback as _PoolRemoteTraceback  # type: ignore[attr-defined]

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


# concurrent.futures.TimeoutError is the builtin TimeoutError from Python 3.11 on; on 3.10 it is
# a class of its own, which `except futures.TimeoutError` code must also catch.
_TIMEOUT_BASES: tuple[type[Exception], ...] = (TimeoutError,)
if _FuturesTimeoutError is not TimeoutError:
    _TIMEOUT_BASES += (_FuturesTimeoutError,)


class TaskTimeoutError(AllcoresError, *_TIMEOUT_BASES):  # type: ignore[misc]
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


class ResultPicklingError(SerializationError, MaybeEncodingError, pickle.PicklingError, TypeError):
    """A task's return value could not be pickled in the worker to travel back.

    It is the ``multiprocessing.pool.MaybeEncodingError`` that ``multiprocessing.Pool`` raises
    for the same mistake (with its ``exc`` and ``value`` attributes: the reprs of the pickling
    error and of the value), and a ``PicklingError`` / ``TypeError``. ``Executor`` raises the
    pickling error's own type instead, as ProcessPoolExecutor does; ``original`` keeps it.
    """

    def __init__(
        self,
        message: str,
        exc: str = "",
        value: str = "",
        original: BaseException | None = None,
    ) -> None:
        Exception.__init__(self, message)
        self.exc = exc
        self.value = value
        self.original = original

    def __str__(self) -> str:  # MaybeEncodingError's own __str__ expects its two arguments
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        message = self.args[0] if self.args else ""
        return (type(self), (message, self.exc, self.value, self.original), self.__dict__)


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


class RemoteTraceback(_PoolRemoteTraceback, _FuturesRemoteTraceback):
    """The worker-side traceback of a task's exception, attached as its ``__cause__``.

    It is both ``multiprocessing.pool.RemoteTraceback`` and the class ProcessPoolExecutor uses
    (``concurrent.futures.process._RemoteTraceback``), so code that inspects the cause written
    for either standard pool keeps working; ``.tb`` holds the text in their format.
    """

    def __init__(self, tb: str) -> None:
        Exception.__init__(self, tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def remote_traceback(text: str) -> RemoteTraceback:
    """A :class:`RemoteTraceback` for a formatted traceback, framed as the standard pools frame
    it (between triple quotes, so it reads apart from the local traceback)."""
    return RemoteTraceback(f'\n"""\n{text}"""')


def add_note(error: BaseException, note: str) -> None:
    """PEP 678's ``add_note``; on Python 3.10 the note is kept in ``__notes__`` all the same."""
    try:
        if hasattr(error, "add_note"):
            error.add_note(note)
        else:
            error.__dict__.setdefault("__notes__", []).append(note)
    except Exception:  # a __notes__ that is not a list, a class without __dict__: no note
        pass


def keeping_type(
    original: BaseException, message: str, cls: type[AllcoresError] = ArgumentPicklingError
) -> BaseException:
    """The error to raise for ``original`` (something failed to pickle): an instance of
    ``original``'s own type, as the standard pools raise, that still says what failed and how
    to fix it.

    When ``cls`` is already of that type (the usual ``TypeError`` / ``PicklingError``), it is a
    ``cls`` with ``message``, caused by ``original``; otherwise (a ``__reduce__`` that raises
    ``RuntimeError``, an ``AttributeError`` for a local object) it is ``original`` itself with
    ``message`` as a note.
    """
    if issubclass(cls, type(original)) or not isinstance(original, Exception):
        # (a SystemExit or KeyboardInterrupt from pickling must not stop the caller's program)
        error = cls(message)
        error.__cause__ = original
        return error
    add_note(original, f"allcores: {message}")
    return original


def start_error(exc: BaseException) -> BaseException:
    """The error for a worker process that could not be started: ``exc`` itself (or, for a
    pickling failure, an error of its type) saying why and what to do."""
    pickling = isinstance(exc, (TypeError, AttributeError, pickle.PicklingError)) or (
        isinstance(exc, RuntimeError) and "context" in str(exc)  # a fork-context SemLock
    )
    if not pickling:
        add_note(exc, "allcores: a worker process could not be started")
        return exc
    text = (
        f"a worker process could not be started: {type(exc).__name__}: {exc}. Under spawn and "
        "forkserver the initializer and its arguments are pickled to start each worker: pass "
        "objects that pickle, or multiprocessing objects (Lock, Event, Value, Queue, manager "
        "proxies) made from the same start method as the pool."
    )
    return keeping_type(exc, text)
