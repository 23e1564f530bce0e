"""The messages that cross the pipes between the manager and a worker.

Each is a small frozen dataclass with slots: typed, self-describing, and cheap to pickle.
Parent -> worker: :class:`RunChunk`, :class:`RunBatch`, :class:`Stop`. Worker -> parent:
:class:`ChunkDone`, :class:`BatchDone`, :class:`Recycled`, :class:`InitFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass

CALL_ONE, CALL_STAR, CALL_ARGS = 0, 1, 2


@dataclass(frozen=True, slots=True)
class RunChunk:
    """Run ``fn`` over ``items``; the worker answers with a :class:`ChunkDone`.

    ``fn_blob`` carries the pickled function the first time a worker meets ``fn_id``; later
    chunks send only the id (a map's function crosses the pipe once per worker, not per task).
    ``items`` is the pickled list of items, kept apart so a worker that cannot unpickle them can
    still answer for the chunk.
    """

    chunk_id: int
    fn_id: int
    fn_blob: bytes | None
    items: bytes
    mode: int  # how to call: CALL_ONE fn(x), CALL_STAR fn(*x), CALL_ARGS fn(*x[0], **x[1])
    stop_on_error: bool
    forget: tuple[int, ...] = ()
    # Nonzero: the chunk may be taken back until the worker starts it. The manager wrote this
    # id to the worker's claim pipe first; the worker runs the chunk only if it reads this id
    # there (see worker_main.Claims).
    claim: int = 0


@dataclass(frozen=True, slots=True)
class RunBatch:
    """Several single-item jobs in one message (apply_async or submit in a loop): one pipe
    write, one worker wake-up and one answer for all of them, instead of one each.

    ``parts`` has one ``(fn_id, mode)`` per job, in order; ``items`` is the
    pickled list of their items (one each); ``functions`` the ``(fn_id, pickled function)``
    pairs this worker has not met yet. The worker answers with a :class:`BatchDone`. Plain
    tuples rather than a dataclass per part: they pickle several times faster.
    """

    batch_id: int
    parts: tuple[tuple[int, int], ...]
    functions: tuple[tuple[int, bytes], ...]
    items: bytes
    forget: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish the work already received, then exit with status 0."""


@dataclass(frozen=True, slots=True)
class TaskError:
    """One item's failure: its offset in the chunk, the exception and the worker's traceback."""

    offset: int
    error: BaseException
    traceback: str


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """The answer to a :class:`RunChunk`.

    ``values`` has one entry per item (None where the item failed). ``errors`` lists the failed
    items. ``ran`` counts the items the worker actually ran (fewer than the chunk's length when it
    stopped at the first error). ``seconds`` is the compute time, the scheduler's cost signal;
    ``rss`` the worker's resident memory afterwards, for the memory ceiling and crash reports.
    ``load_error`` is set when the items could not be unpickled in the worker at all.
    ``started`` is when the task function began (``time.monotonic()``, one system-wide clock on
    Linux, so the manager can compare it with its own) and ``load_seconds`` the time spent
    unpickling the items before that, ``cpu_seconds`` the CPU time the worker got meanwhile
    (below ``seconds`` when other processes competed for the core): the run statistics' raw
    material.
    """

    chunk_id: int
    values: list
    errors: tuple[TaskError, ...]
    ran: int
    seconds: float
    rss: int
    load_error: TaskError | None = None
    started: float = 0.0
    load_seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchDone:
    """The answer to a :class:`RunBatch`: each part's value and error, kept apart per job.

    ``values`` has one entry per part (None where it failed); ``errors`` lists the failed parts
    (``TaskError.offset`` is the part's index); ``seconds`` is each part's compute time, so every
    job (and its function's learned cost) gets its own. ``load_error`` is set when the batch's
    items or functions could not be unpickled: the manager then runs each part alone, where the
    error is reported for the one job it belongs to. ``started`` (``time.monotonic()``) is when
    the first part began and ``load_seconds`` the unpickling before it, as in :class:`ChunkDone`;
    the parts run one after the other.
    """

    batch_id: int
    values: list
    errors: tuple[TaskError, ...]
    seconds: tuple[float, ...]
    rss: int
    load_error: TaskError | None = None
    started: float = 0.0
    load_seconds: float = 0.0
    cpu_seconds: float = 0.0  # the batch's CPU time (time.process_time), for the statistics


@dataclass(frozen=True, slots=True)
class InitFailed:
    """Sent when the initializer raised, before any work; the worker then exits."""

    error: BaseException
    traceback: str


@dataclass(frozen=True, slots=True)
class Ready:
    """Sent once, when the worker's start-up (its initializer) is over and its loop begins.

    A timed item's clock starts here at the earliest: a replacement worker's start (spawn takes
    50-100 ms, an initializer as long as it likes) is not the item's running time.
    """


@dataclass(frozen=True, slots=True)
class Recycled:
    """Sent after a :class:`ChunkDone`: shared-memory segments of the chunk's arguments that the
    worker no longer views, which the manager may write the next arguments into."""

    names: tuple[str, ...]
    gone: tuple[str, ...] = ()  # still viewed by a task: unlinked, never coming back
