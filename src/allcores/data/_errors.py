"""``DataError``: bad input, reported with the file, the place in it, and the column."""

from __future__ import annotations

from typing import Any

from allcores.errors import AllcoresError

__all__ = ["DataError"]


class DataError(AllcoresError, ValueError):
    """The input file is empty, malformed, lacks a column, or holds a value of the wrong type.

    The message names the place, e.g. ``sales.csv, line 7, column 'amount': 'abc' is not a
    number``; the same facts are attributes, so programs need not parse the message.

    Attributes:
        file: the input file.
        line: 1-based line of a CSV file (the header is line 1), or None.
        row_group: 0-based row group of a Parquet file, or None.
        row: 0-based row within the row group (Parquet), or None.
        column: the column at fault, or None.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str,
        line: int | None = None,
        row_group: int | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        where = [str(file)]
        if line is not None:
            where.append(f"line {line}")
        if row_group is not None:
            where.append(f"row group {row_group}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}")
        self.problem = problem
        self.file = str(file)
        self.line = line
        self.row_group = row_group
        self.row = row
        self.column = column

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields do not survive the default exception pickling (which replays
        # self.args), and this error crosses from worker to parent.
        kwargs = dict(
            file=self.file,
            line=self.line,
            row_group=self.row_group,
            row=self.row,
            column=self.column,
        )
        return (_rebuild, (self.problem, kwargs))


def _rebuild(problem: str, kwargs: dict[str, Any]) -> DataError:
    return DataError(problem, **kwargs)
