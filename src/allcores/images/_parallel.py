"""The one place the image tool meets the engine: ``allcores.imap``, unordered, collecting."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


def imap_unordered(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None
) -> Iterator[Any]:
    """Results as they arrive; a worker crash yields its exception in place of the result.

    The engine's shared default pool is used, so a second run in the same process (the
    library called in a loop, a notebook) pays no process start-up. On Ctrl-C the engine
    stops the running tasks and their workers before the KeyboardInterrupt reaches the caller.
    """
    import allcores

    yield from allcores.imap(fn, items, workers=workers, ordered=False, on_error="collect")
