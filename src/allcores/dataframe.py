"""Parallel ``DataFrame.apply`` and ``map_partitions`` for in-memory pandas data.

::

    import allcores.dataframe as acdf

    out = acdf.apply(df, score_row, axis=1)              # == df.apply(score_row, axis=1)
    sums = acdf.map_partitions(df, lambda part: part.groupby("k").size())

The frame is cut into row ranges (``df.iloc[a:b]``: views, not copies) and each range travels
to one worker as one message. The engine pickles it at protocol 5, so each column block
leaves as a raw buffer (through shared memory when big) instead of being re-encoded; only
the partition a worker needs crosses, never the whole frame. The pandarallel use case,
without its per-call process start and with lambdas and closures allowed.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["apply", "map_partitions"]

#: Partitions per worker: a few per worker even out rows of uneven cost, and the cost of one
#: more message (~0.1 ms) is nothing beside a partition's work.
PARTITIONS_PER_WORKER = 4
#: Frames smaller than this many rows run in this process: shipping them costs more than the
#: work they hold saves.
MIN_PARALLEL_ROWS = 64


def apply(
    df: Any,
    fn: Callable[..., Any],
    axis: int | str = 1,
    *,
    workers: int | None = None,
    partitions: int | None = None,
    **kwargs: Any,
) -> Any:
    """``df.apply(fn, axis=axis, **kwargs)`` on every core, with the same result.

    Args:
        df: a pandas DataFrame (or Series: ``fn`` then gets each value).
        fn: the row function (``axis=1``) or column function (``axis=0``); any callable,
            lambdas and closures included.
        axis: 1 or "columns" (default: ``fn`` gets each row as a Series), 0 or "index"
            (``fn`` gets each column).
        workers: worker processes (default: every core).
        partitions: how many pieces (default: 4 per worker).
        kwargs: passed on to ``DataFrame.apply`` (``result_type=``, ``args=``, ...).

    Example::

        >>> import pandas as pd, allcores.dataframe as acdf
        >>> df = pd.DataFrame({"a": range(1000), "b": range(1000)})
        >>> int(acdf.apply(df, lambda row: row["a"] * 2 + row["b"], axis=1).iloc[-1])
        2997
    """
    import pandas as pd

    by_row = axis in (1, "columns")
    if not by_row and axis not in (0, "index"):
        raise ValueError(f"axis must be 0/'index' or 1/'columns', got {axis!r}")
    if isinstance(df, pd.Series):
        task = functools.partial(_apply_series, fn, kwargs)
        return _concat(_run(task, _row_parts(df, workers, partitions), workers), df, 0)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"apply needs a pandas DataFrame or Series, got {type(df).__name__}")
    task = functools.partial(_apply_frame, fn, 1 if by_row else 0, kwargs)
    parts = (
        _row_parts(df, workers, partitions) if by_row else _column_parts(df, workers, partitions)
    )
    if len(parts) <= 1:
        return df.apply(fn, axis=axis, **kwargs)
    return _concat(_run(task, parts, workers), df, 0 if by_row else 1)


def map_partitions(
    df: Any,
    fn: Callable[[Any], Any],
    *,
    workers: int | None = None,
    partitions: int | None = None,
    combine: str = "concat",
) -> Any:
    """Call ``fn(piece)`` on row ranges of ``df`` in parallel and combine the results in order.

    Args:
        df: a pandas DataFrame or Series.
        fn: gets one piece (a DataFrame/Series of consecutive rows) and returns anything.
        workers, partitions: as in :func:`apply`.
        combine: "concat" (``pandas.concat`` when every result is a DataFrame or Series,
            else a list) or "list".

    Example::

        >>> import pandas as pd, allcores.dataframe as acdf
        >>> df = pd.DataFrame({"k": [1, 2, 1, 2] * 250, "v": 1})
        >>> sizes = acdf.map_partitions(df, lambda p: p.groupby("k")["v"].sum())
        >>> sizes.groupby(level=0).sum().to_dict()
        {1: 500, 2: 500}
    """
    import pandas as pd

    if combine not in ("concat", "list"):
        raise ValueError(f"combine must be 'concat' or 'list', got {combine!r}")
    if not isinstance(df, (pd.DataFrame, pd.Series)):
        raise TypeError(
            f"map_partitions needs a pandas DataFrame or Series, got {type(df).__name__}"
        )
    results = _run(fn, _row_parts(df, workers, partitions), workers)
    if combine == "concat" and all(isinstance(r, (pd.DataFrame, pd.Series)) for r in results):
        return pd.concat(results)
    return results


def _apply_frame(fn: Callable[..., Any], axis: int, kwargs: dict[str, Any], part: Any) -> Any:
    return part.apply(fn, axis=axis, **kwargs)


def _apply_series(fn: Callable[..., Any], kwargs: dict[str, Any], part: Any) -> Any:
    return part.apply(fn, **kwargs)


def _count(n_items: int, workers: int | None, partitions: int | None) -> int:
    if partitions is not None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions!r}")
        return min(partitions, max(1, n_items))
    if n_items < MIN_PARALLEL_ROWS or workers == 1:
        return 1
    import allcores

    count = (workers or allcores.cpu_count()) * PARTITIONS_PER_WORKER
    return max(1, min(count, n_items))


def _row_parts(df: Any, workers: int | None, partitions: int | None) -> list[Any]:
    n = len(df)
    k = _count(n, workers, partitions)
    bounds = [n * i // k for i in range(k + 1)]
    # iloc row slices are views of the column blocks: no copy until the engine pickles them
    return [df.iloc[a:b] for a, b in itertools.pairwise(bounds)]


def _column_parts(df: Any, workers: int | None, partitions: int | None) -> list[Any]:
    n = df.shape[1]
    k = _count(n * len(df), workers, partitions) if partitions is None else partitions
    k = max(1, min(k, n))
    bounds = [n * i // k for i in range(k + 1)]
    return [df.iloc[:, a:b] for a, b in itertools.pairwise(bounds)]


def _run(fn: Callable[[Any], Any], parts: list[Any], workers: int | None) -> list[Any]:
    """The parts through the batch tools' one door to the engine (``allcores._batch``): the
    worker check, and one part or one worker runs here (no process is worth starting)."""
    from allcores._batch import BatchRun

    with BatchRun(workers, tool="dataframe") as run:
        return list(run.imap(fn, parts, chunksize=1))


def _concat(results: list[Any], like: Any, axis: int) -> Any:
    import pandas as pd

    if not results:
        return like.apply(lambda x: x)
    if len(results) == 1:
        return results[0]
    if all(isinstance(r, pd.Series) for r in results) or all(
        isinstance(r, pd.DataFrame) for r in results
    ):
        return pd.concat(results, axis=axis if isinstance(results[0], pd.DataFrame) else 0)
    raise TypeError(
        "the pieces returned different kinds of results "
        f"({sorted({type(r).__name__ for r in results})}); use map_partitions(..., combine='list')"
    )
