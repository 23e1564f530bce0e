"""Analyse a large CSV or Parquet file on every core; workers read their own partitions.

::

    from allcores import data

    data.write_sample("transactions.csv", 2_000_000)          # synthetic, deterministic
    table = data.rfm("transactions.csv")                      # built-in per-customer RFM
    totals = data.analyze("transactions.csv",                 # your function per partition
                          lambda df: df.groupby("country")["amount"].sum(),
                          combine=lambda a, b: a.add(b, fill_value=0))

The parent only cuts the file (CSV: byte ranges ending at line breaks; Parquet: row groups)
and sends each worker a path and two numbers; parsing happens in the workers, in parallel.
Bad input raises :class:`DataError` naming the file, the line or row group, and the column.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from allcores.data._errors import DataError
from allcores.data._output import atomic_output
from allcores.data._partition import Partition, check_columns, plan, read_partition
from allcores.data._rfm import REQUIRED_COLUMNS, SEGMENTS, rfm_finalize, rfm_partial
from allcores.data._sample import SAMPLE_COLUMNS, write_sample

__all__ = [
    "REQUIRED_COLUMNS",
    "SAMPLE_COLUMNS",
    "SEGMENTS",
    "DataError",
    "Partition",
    "analyze",
    "plan",
    "read_partition",
    "rfm",
    "rfm_frame",
    "write_output",
    "write_sample",
]


def analyze(
    path: str | os.PathLike[str],
    fn: Callable[[Any], Any],
    *,
    combine: str | Callable[[Any, Any], Any] = "concat",
    columns: list[str] | None = None,
    workers: int | None = None,
    partitions: int | None = None,
    report: str | os.PathLike[str] | None = None,
    _run: Any = None,
) -> Any:
    """Run ``fn(partition_dataframe)`` on every partition of a file, in parallel, and combine.

    Args:
        path: CSV (with a header line) or Parquet file.
        fn: called in a worker with one partition as a pandas DataFrame.
        combine: ``"concat"`` (``pandas.concat`` of DataFrames/Series, in file order; the
            row labels a partition starts with are 0..n-1 *within the partition*, so a
            row-wise result keeps them only when it changed them, e.g. by filtering: call
            ``reset_index(drop=True)`` if they matter; group-by keys are kept as they are),
            ``"list"`` (the results as a list, in file order) or a function
            ``reduce(a, b) -> ab`` folded over the results in file order.
        columns: read only these columns (faster; a missing one raises :class:`DataError`).
        workers: worker processes (default: every core).
        partitions: how many partitions (default: from the file size only, so the result
            does not depend on ``workers``).
        report: a path: write an HTML report of where the run's time went
            (see :func:`allcores.report`).

    Example::

        >>> from allcores import data
        >>> per_channel = data.analyze(                       # doctest: +SKIP
        ...     "transactions.csv", lambda df: df.groupby("channel")["amount"].sum(),
        ...     combine=lambda a, b: a.add(b, fill_value=0), columns=["channel", "amount"])
    """
    parts = plan(path, partitions)
    check_columns(parts[0], columns)
    results = _map(functools.partial(_apply, fn, columns), parts, workers, report, _run)
    return _combine(results, combine)


def rfm(
    path: str | os.PathLike[str],
    *,
    as_of: Any = None,
    workers: int | None = None,
    partitions: int | None = None,
    report: str | os.PathLike[str] | None = None,
    _run: Any = None,
) -> Any:
    """Per-customer recency, frequency, monetary value, scores and segment, on every core.

    The file needs the columns ``customer_id``, ``date`` (YYYY-MM-DD) and ``amount``; other
    columns are not read. Returns a DataFrame sorted by customer_id (see :func:`rfm_frame`
    for the columns). ``as_of`` is the reference date for recency (default: the day after
    the last purchase in the file).

    Example::

        >>> from allcores import data
        >>> table = data.rfm("transactions.csv")             # doctest: +SKIP
        >>> table["segment"].value_counts()                   # doctest: +SKIP
    """
    parts = plan(path, partitions)
    check_columns(parts[0], list(REQUIRED_COLUMNS))
    return rfm_finalize(_map(_rfm_task, parts, workers, report, _run), as_of)


def rfm_frame(df: Any, *, as_of: Any = None) -> Any:
    """The same RFM analysis on an in-memory DataFrame, in this process.

    Columns of the result: customer_id, last_purchase, recency_days, frequency, monetary,
    r_score, f_score, m_score (1-5, 5 best) and segment.
    """
    return rfm_finalize([rfm_partial(df)], as_of)


def write_output(df: Any, path: str | os.PathLike[str]) -> str:
    """Write a DataFrame to CSV or Parquet (by suffix); the file appears only when complete."""
    p = os.fspath(path)
    with atomic_output(p) as tmp:
        if p.lower().endswith((".parquet", ".pq", ".parq")):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return p


def _apply(fn: Callable[[Any], Any], columns: list[str] | None, part: Partition) -> Any:
    return fn(read_partition(part, columns))


def _rfm_task(part: Partition) -> Any:
    # amount parsed as float64 by the C parser (fast); a bad value is located afterwards.
    dtype = {"amount": "float64"} if part.format == "csv" else None
    return rfm_partial(read_partition(part, list(REQUIRED_COLUMNS), dtype), part)


def _map(
    fn: Callable[[Partition], Any],
    parts: list[Partition],
    workers: int | None,
    report: str | os.PathLike[str] | None,
    run: Any,
) -> list[Any]:
    """Every partition through the batch tools' one door to the engine (``allcores._batch``):
    one worker or one partition runs here; ``run`` is the CLI's, to read its statistics."""
    from allcores._batch import BatchRun

    if run is None:
        run = BatchRun(workers, tool="data", report=report)
    with run:
        return list(run.imap(fn, parts, chunksize=1))


def _combine(results: list[Any], combine: str | Callable[[Any, Any], Any]) -> Any:
    if callable(combine):
        return functools.reduce(combine, results)
    if combine == "list":
        return results
    if combine != "concat":
        raise ValueError(f"combine must be 'concat', 'list' or a function, got {combine!r}")
    import pandas as pd

    if not all(isinstance(r, (pd.DataFrame, pd.Series)) for r in results):
        kinds = sorted({type(r).__name__ for r in results})
        raise TypeError(
            f"combine='concat' needs DataFrame or Series results, got {', '.join(kinds)}; "
            "use combine='list' or a reduce function"
        )
    # Row-wise results keep a fresh 0..n-1 index; keyed results (a group-by) keep their keys.
    fresh = all(isinstance(r.index, pd.RangeIndex) for r in results)
    return pd.concat(results, ignore_index=fresh)
