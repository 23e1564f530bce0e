"""RFM: recency, frequency and monetary value per customer, and the segment they put it in.

Two steps, so the heavy one runs where the data is read:

* per partition (worker): validate, then one group-by to ``last purchase, count, sum`` per
  customer: a few bytes per customer go back to the parent instead of the rows;
* combine (parent): group the partials again (a customer may appear in several partitions),
  then score each of R, F and M from 1 to 5 by quintile and name the segment from (R, F).
"""

from __future__ import annotations

from typing import Any

from allcores.data._errors import DataError
from allcores.data._partition import Partition, location

__all__ = ["REQUIRED_COLUMNS", "SEGMENTS", "rfm_finalize", "rfm_partial"]

REQUIRED_COLUMNS = ("customer_id", "date", "amount")

# The usual RFM grid: rows are the recency score 1-5, columns the frequency score 1-5.
_H, _R, _C, _S, _N = "hibernating", "at risk", "cannot lose", "about to sleep", "need attention"
_L, _P, _W, _PL, _CH = "loyal", "promising", "new", "potential loyalist", "champion"
SEGMENTS: tuple[tuple[str, ...], ...] = (
    (_H, _H, _R, _R, _C),  # R = 1: long gone
    (_H, _H, _R, _R, _C),  # R = 2
    (_S, _S, _N, _L, _L),  # R = 3
    (_P, _PL, _PL, _L, _L),  # R = 4
    (_W, _PL, _PL, _CH, _CH),  # R = 5: bought very recently
)
SCORES = 5


def rfm_partial(df: Any, part: Partition | None = None) -> Any:
    """Per-customer ``last`` (date), ``frequency`` (rows) and ``monetary`` (sum) of one piece.

    ``df`` needs the columns customer_id, date (ISO text or dates) and amount (numbers);
    ``part`` only serves to name the line or row group of a bad value.
    """
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise _error(part, f"no such column; RFM needs {', '.join(REQUIRED_COLUMNS)}", missing[0])
    for column in REQUIRED_COLUMNS:
        empty = df[column].isna().to_numpy()
        if empty.any():
            raise _at(part, int(empty.nonzero()[0][0]), "missing value", column)
    amount = df["amount"]
    if not pd.api.types.is_numeric_dtype(amount) or pd.api.types.is_bool_dtype(amount):
        converted = pd.to_numeric(amount, errors="coerce")
        bad = converted.isna().to_numpy()
        if bad.any():
            i = int(bad.nonzero()[0][0])
            raise _at(part, i, f"{amount.iloc[i]!r} is not a number", "amount")
        amount = converted
    date = df["date"]
    if not pd.api.types.is_datetime64_any_dtype(date):
        date = _parse_dates(date, part)
    frame = pd.DataFrame({"customer_id": df["customer_id"], "date": date, "amount": amount})
    return frame.groupby("customer_id", sort=False).agg(
        last=("date", "max"), frequency=("amount", "size"), monetary=("amount", "sum")
    )


def _parse_dates(date: Any, part: Partition | None) -> Any:
    """ISO dates as datetime64, parsing each distinct text once.

    A transactions table holds a few hundred distinct days among millions of rows, so
    factorising first and parsing the uniques is several times faster than ``to_datetime``
    on the column (which converts every arrow string to a Python object first).
    """
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(date)
    parsed = pd.to_datetime(pd.Series(uniques, dtype=object), format="ISO8601", errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.isin(codes, bad.nonzero()[0]).nonzero()[0][0])
        raise _at(part, i, f"{date.iloc[i]!r} is not a date (expected YYYY-MM-DD)", "date")
    return parsed.to_numpy()[codes]


def rfm_finalize(partials: list[Any], as_of: Any = None) -> Any:
    """Merge per-partition partials (in partition order) into the RFM table.

    Returns one row per customer, sorted by ``customer_id``: ``last_purchase``,
    ``recency_days`` (days before ``as_of``; default the day after the last purchase in the
    data), ``frequency``, ``monetary``, ``r_score``/``f_score``/``m_score`` (1-5, 5 best) and
    ``segment``.
    """
    import numpy as np
    import pandas as pd

    kinds = {pd.api.types.is_numeric_dtype(p.index) for p in partials}
    if len(kinds) > 1:  # one partition held only numeric ids, another text ones
        partials = [p.set_axis(p.index.astype(str)) for p in partials]
    combined = pd.concat(partials)
    g = combined.groupby(level=0, sort=True).agg(
        last=("last", "max"), frequency=("frequency", "sum"), monetary=("monetary", "sum")
    )
    as_of = pd.Timestamp(as_of) if as_of is not None else g["last"].max() + pd.Timedelta(days=1)
    recency = (as_of - g["last"]).dt.days.astype(np.int64)
    r = _quantile_score(-recency)  # the most recent buyers score 5
    f = _quantile_score(g["frequency"])
    m = _quantile_score(g["monetary"])
    table = np.array(SEGMENTS, dtype=object)
    out = pd.DataFrame(
        {
            "customer_id": g.index.to_numpy(),
            "last_purchase": g["last"].dt.date.to_numpy(),
            "recency_days": recency.to_numpy(),
            "frequency": g["frequency"].to_numpy(np.int64),
            "monetary": g["monetary"].round(2).to_numpy(),
            "r_score": r,
            "f_score": f,
            "m_score": m,
            "segment": table[r - 1, f - 1],
        }
    )
    out["segment"] = out["segment"].astype(str)
    return out


def _quantile_score(values: Any) -> Any:
    """1..5 by quintile of rank (5 = highest values); ties share a score.

    ``1 + floor(5 * (rank - 0.5) / n)`` is the quintile for large n and stays symmetric for
    small n (3 customers score 1, 3 and 5). Average ranks make it independent of row order.
    """
    import numpy as np

    rank = values.rank(method="average").to_numpy()
    score = 1 + np.floor(SCORES * (rank - 0.5) / len(rank))
    return np.clip(score, 1, SCORES).astype(np.int64)


def _error(part: Partition | None, problem: str, column: str) -> DataError:
    if part is None:
        return DataError(problem, file="<DataFrame>", column=column)
    return DataError(
        problem, file=part.file, column=column, line=1 if part.format == "csv" else None
    )


def _at(part: Partition | None, row: int, problem: str, column: str) -> DataError:
    if part is None:
        return DataError(problem, file="<DataFrame>", row=row, column=column)
    if part.format == "csv" and problem == "missing value":
        # an empty field is often a short row: say so when it is
        from allcores.data._partition import malformed_row_error

        with open(part.file, "rb") as f:
            f.seek(part.start)
            data = f.read(part.end - part.start)
        short = malformed_row_error(part, data)
        if short.line is not None and short.line <= location(part, row)["line"]:
            return short
    return DataError(problem, file=part.file, column=column, **location(part, row))
