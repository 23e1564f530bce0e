"""The one place the image tool meets the engine: ``allcores.imap``, unordered, collecting."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


def imap_unordered(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None
) -> Iterator[Any]:
    """Results as they arrive; a worker crash yields its exception in place of the result."""
    import importlib.util

    if importlib.util.find_spec("allcores._oneliners") is None:  # TEMPORARY until the engine lands
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap_unordered(fn, items)
        return
    import allcores

    yield from allcores.imap(fn, items, workers=workers, ordered=False, on_error="collect")
