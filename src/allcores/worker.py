"""What a task may ask about the worker process it runs in.

The load-once-per-worker pattern (a model, a lookup table, a database connection)::

    import allcores

    def load_model():
        allcores.worker.current().state["model"] = expensive_load()

    def predict(x):
        return allcores.worker.current().state["model"](x)

    with allcores.Pool(initializer=load_model) as pool:
        pool.map(predict, inputs)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerContext", "current"]


@dataclass
class WorkerContext:
    """The worker a task runs in.

    Attributes:
        id: the pool's number for this worker, 0 .. workers-1 (a replacement worker takes the id
            of the one it replaces, so per-worker resources can be indexed by it).
        pid: the worker's process id.
        state: a dict that lives as long as the worker process: fill it in an initializer or
            lazily in the first task, read it in every later task.
    """

    id: int
    pid: int
    state: dict[str, Any] = field(default_factory=dict)


_current: WorkerContext | None = None


def current() -> WorkerContext:
    """The :class:`WorkerContext` of the worker running this task.

    Raises RuntimeError outside an allcores worker (for example in the parent process).

    >>> import allcores
    >>> allcores.map(lambda _: allcores.worker.current().id >= 0, range(2))
    [True, True]
    """
    if _current is None:
        raise RuntimeError(
            "allcores.worker.current() works only inside a task running in an allcores worker "
            "process (a function given to allcores.map, Pool or Executor)"
        )
    return _current


def _enter(worker_id: int, pid: int) -> WorkerContext:
    global _current
    _current = WorkerContext(worker_id, pid)
    return _current
