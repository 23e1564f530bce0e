"""How the items of one call are run: the one options object every facade hands the engine.

``Pool``, ``Executor``, ``allcores.map``/``imap`` and the batch tools (through the one-liners)
spell these options as keyword arguments, as the standard pools do; each turns them into a
:class:`TaskOptions` and nothing else. Values are checked here, once, when the object is made:
a bad value fails at the call that gave it, with a message that says what to pass instead.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from allcores._engine.scheduler import RetryPolicy

OnError = Literal["raise", "collect", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "collect", "skip")

# Ordered imap holds the results that finished behind a slow item; past this many bytes of them
# it stops reading input until the slow item is done (multiprocessing.Pool holds them all).
DEFAULT_HELD_BYTES = 64 << 20


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class TaskOptions:
    """How the items of one call are run; a pool's defaults, overridable per call.

    Attributes:
        item_timeout: seconds one item may run (the public keyword is ``timeout=``); past it the
            worker is stopped and replaced and the item fails with TaskTimeoutError. None: no
            limit. The engine calls it ``item_timeout`` everywhere, so it is never confused with
            a caller's wait (``AsyncResult.get(timeout)``, ``Executor.map(timeout=)``).
        retries: how many more times a failed item runs (crashes and timeouts always, task
            exceptions only when their type is in ``retry_on``).
        retry_on: task exception types that earn a retry.
        on_error: "raise" (fail fast: the first error is raised and pending work is dropped),
            "collect" (the exception stands in the results at the item's place), or "skip"
            (failed items are left out; listed in ``.failures``).
        backoff: seconds before the first retry, doubling with each further attempt.
        progress: False, True (a bar) or an object with ``update(n)`` and ``close()``.
        chunksize: items per message, or None to size chunks adaptively ("auto").
        max_held_bytes: how many bytes of results an ordered ``imap`` may hold behind a
            slow item before it stops reading input.
    """

    item_timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = field(default=())
    on_error: OnError = "raise"
    backoff: float = 0.05
    progress: Any = False
    chunksize: int | None = None
    max_held_bytes: int = DEFAULT_HELD_BYTES

    def __post_init__(self) -> None:
        timeout = self.item_timeout
        if timeout is not None and (not _is_number(timeout) or not timeout > 0):
            raise ValueError(
                f"timeout must be a positive number of seconds or None, got {timeout!r}"
            )
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {self.retries!r}")
        retry_on: Any = self.retry_on
        if retry_on is None:
            retry_on = ()
        elif isinstance(retry_on, type):
            retry_on = (retry_on,)
        else:
            try:
                retry_on = tuple(retry_on)
            except TypeError:
                retry_on = (retry_on,)  # reported as not an exception class just below
        for kind in retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(
                    f"retry_on must be an exception class or a tuple of them, got {kind!r}"
                )
        object.__setattr__(self, "retry_on", retry_on)
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"on_error must be one of {', '.join(map(repr, ON_ERROR_CHOICES))}, "
                f"got {self.on_error!r}"
            )
        if not _is_number(self.backoff) or self.backoff < 0:
            raise ValueError(f"backoff must be a non-negative number of seconds, got "
                             f"{self.backoff!r}")
        chunksize = self.chunksize
        if chunksize == "auto":
            object.__setattr__(self, "chunksize", None)
        elif chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise ValueError(f"chunksize must be a positive integer or 'auto', got {chunksize!r}")
        held = self.max_held_bytes
        if isinstance(held, bool) or not isinstance(held, int) or held < 1:
            raise ValueError(f"max_held_bytes must be a positive number of bytes, got {held!r}")
        progress = self.progress
        if progress not in (None, False, True) and not (
            hasattr(progress, "update") and hasattr(progress, "close")
        ):
            raise TypeError(
                "progress must be True, False or an object with update(n) and close() "
                f"(a tqdm bar, for instance), got {progress!r}"
            )

    def merged(self, **overrides: Any) -> TaskOptions:
        """These options with the given ones replaced; None means "keep the default"."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given) if given else self

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, tuple(self.retry_on), self.backoff)
