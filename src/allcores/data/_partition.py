"""Partitions of a CSV or Parquet file that workers read themselves.

::

    parent: reads the header (CSV) or the footer (Parquet) and a few bytes at each cut
      │        -> [Partition(byte range | row group), ...]   (tiny: a path and two numbers)
      ├──> worker: seek, read its own bytes / row group, parse with pandas -> DataFrame -> fn
      └──> worker: ...

A CSV file is cut into byte ranges, each moved forward to just after a line break, so every
partition holds whole lines; the parent never parses or pickles the table. The number of
partitions depends only on the file's size (never on the worker count), so results that sum
floats are identical for any ``workers``. Limitation: a quoted field holding a line break
could be cut in two, so it is refused (a :class:`DataError` naming its line) wherever it is;
such files must be read whole (pandas) or converted to Parquet first.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

from allcores.data._errors import DataError

__all__ = ["Partition", "check_columns", "plan", "read_partition"]

#: A CSV partition holds at most this many bytes: parsed, that is a few hundred MiB of
#: DataFrame per worker at most.
PARTITION_BYTES = 32 << 20
#: ... and small files are still cut into up to MIN_PARTITIONS pieces of at least
#: MIN_PARTITION_BYTES, so a 20 MiB file keeps 8 cores busy while a 50 KiB one is read whole
#: (a worker round trip costs more than parsing that much).
MIN_PARTITIONS = 8
MIN_PARTITION_BYTES = 1 << 20
#: Bytes read at a time while looking for the next line break or counting lines.
SCAN_BYTES = 1 << 16

_PARQUET_MAGIC = b"PAR1"
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(frozen=True)
class Partition:
    """One piece of an input file: what a worker needs to read it, and nothing more."""

    file: str
    """Path of the input file."""
    index: int
    """Position among the file's partitions (results are combined in this order)."""
    format: str
    """``"csv"`` or ``"parquet"``."""
    columns: tuple[str, ...]
    """All column names of the file, in file order."""
    start: int = 0
    """CSV: first byte (always the start of a line)."""
    end: int = 0
    """CSV: one past the last byte (always just after a line break, or the end of file)."""
    row_groups: tuple[int, ...] = ()
    """Parquet: the row groups of this partition."""


def file_format(path: str | os.PathLike[str]) -> str:
    """``"parquet"`` by suffix or magic bytes, else ``"csv"``."""
    p = os.fspath(path)
    if p.lower().endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if p.lower().endswith((".gz", ".bz2", ".xz", ".zst", ".zip")):
        raise DataError(
            "compressed CSV cannot be split into byte ranges; decompress it first "
            "or convert it to Parquet",
            file=p,
        )
    try:
        with open(p, "rb") as f:
            return "parquet" if f.read(4) == _PARQUET_MAGIC else "csv"
    except FileNotFoundError:
        raise DataError("no such file", file=p) from None


def plan(path: str | os.PathLike[str], partitions: int | None = None) -> list[Partition]:
    """Cut a file into partitions (the parent's only look at the data).

    Args:
        path: a CSV file with a header line, or a Parquet file.
        partitions: how many (CSV: at most this many, cut at line breaks; Parquet: row groups
            are grouped into this many). Default: from the file size alone.

    Example::

        >>> parts = plan("transactions.csv")           # doctest: +SKIP
        >>> parts[0].start, parts[0].end                # doctest: +SKIP
        (40, 16777251)
    """
    p = os.fspath(path)
    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions!r}")
    if file_format(p) == "parquet":
        return _plan_parquet(p, partitions)
    return _plan_csv(p, partitions)


def _plan_csv(path: str, partitions: int | None) -> list[Partition]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.readline()
        if not header.strip():
            raise DataError(
                "the file is empty; expected a header line naming the columns", file=path, line=1
            )
        data_start = f.tell()
        if not f.read(SCAN_BYTES).strip():
            raise DataError("the file has a header but no data rows", file=path, line=2)
        columns = _parse_header(path, header)
        data = size - data_start
        if partitions is None:
            partitions = max(
                -(-data // PARTITION_BYTES), min(MIN_PARTITIONS, -(-data // MIN_PARTITION_BYTES))
            )
        cuts = [data_start]
        for i in range(1, partitions):
            pos = _next_line_start(f, data_start + data * i // partitions, size)
            if cuts[-1] < pos < size:
                cuts.append(pos)
        cuts.append(size)
    return [
        Partition(path, i, "csv", columns, start=a, end=b)
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
    ]


def _parse_header(path: str, header: bytes) -> tuple[str, ...]:
    try:
        text = header.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"the header is not UTF-8 text ({exc.reason})", file=path, line=1) from None
    names = tuple(name.strip() for name in next(csv.reader([text.rstrip("\r\n")])))
    seen: set[str] = set()
    for name in names:
        if not name:
            raise DataError("the header has an empty column name", file=path, line=1)
        if name in seen:
            raise DataError("the header names this column twice", file=path, line=1, column=name)
        seen.add(name)
    return names


def _next_line_start(f: Any, target: int, size: int) -> int:
    """The offset just after the first line break at or after ``target - 1``."""
    pos = target - 1
    f.seek(pos)
    while pos < size:
        block = f.read(SCAN_BYTES)
        if not block:
            break
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)
    return size


def _plan_parquet(path: str, partitions: int | None) -> list[Partition]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError with its own words
        raise DataError(f"not a readable Parquet file ({exc})", file=path) from None
    columns = tuple(meta.schema.names)
    groups = [g for g in range(meta.num_row_groups) if meta.row_group(g).num_rows > 0]
    if not groups:
        raise DataError("the file has no rows", file=path)
    count = len(groups) if partitions is None else min(partitions, len(groups))
    # consecutive row groups, as evenly as whole groups allow
    bounds = [len(groups) * i // count for i in range(count + 1)]
    return [
        Partition(path, i, "parquet", columns, row_groups=tuple(groups[a:b]))
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def check_columns(part: Partition, columns: list[str] | None) -> None:
    """Raise a :class:`DataError` naming the first of ``columns`` the file does not have."""
    missing = [c for c in columns or () if c not in part.columns]
    if missing:
        raise DataError(
            f"no such column; the file has: {', '.join(part.columns)}",
            file=part.file,
            line=1 if part.format == "csv" else None,
            column=missing[0],
        )


def read_partition(
    part: Partition, columns: list[str] | None = None, dtype: dict[str, str] | None = None
) -> Any:
    """Read one partition as a pandas DataFrame (in the worker).

    Args:
        part: from :func:`plan`.
        columns: read only these (default: all); a missing one is a :class:`DataError`.
        dtype: CSV only, e.g. ``{"amount": "float64"}``; a value that does not convert is a
            :class:`DataError` naming its line and column.
    """
    check_columns(part, columns)
    if part.format == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(part.file).read_row_groups(list(part.row_groups), columns=columns)
        return table.to_pandas(date_as_object=False)  # datetime64: vectorised, not objects
    return _read_csv(part, columns, dtype)


def _read_csv(part: Partition, columns: list[str] | None, dtype: dict[str, str] | None) -> Any:
    import pandas as pd

    names = list(part.columns)
    with warnings.catch_warnings():
        # pandas only *warns* when the first row has too many fields (and drops them);
        # that is a malformed row to us.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        with open(part.file, "rb", buffering=0) as raw:
            raw.seek(part.start)
            counted = _CountingRange(raw, part.end - part.start)
            try:
                df = pd.read_csv(
                    io.BufferedReader(counted, READ_BUFFER),
                    header=None,
                    names=names,
                    usecols=columns,
                    dtype=dtype,
                    index_col=False,
                )
            except UnicodeDecodeError:
                raise not_utf8_error(part, _partition_bytes(part)) from None
            except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
                raise malformed_row_error(part, _partition_bytes(part), str(exc)) from None
            except (ValueError, TypeError) as exc:
                if not dtype:
                    raise
                error = _find_bad_value(part, _partition_bytes(part), columns, dtype)
                if error is None:
                    raise
                raise error from exc
        if not counted.plausible(len(names)):
            # A row with too few fields becomes NaN and, with usecols, one with too many is
            # cut silently; a quoted line break makes two lines of one row. Legal files land
            # here too (quoted commas, blank lines): they pass, and the frame read above
            # stands. The check costs a second parse, only for such partitions.
            _check_rows(part, _partition_bytes(part))
    return df


def _check_rows(part: Partition, data: bytes) -> None:
    """Raise :class:`DataError` for the first row of ``data`` that is not a plain CSV row of
    the header's width: too many or too few fields, or a quoted field holding a line break.

    Not pandas: it gives a missing field and an empty one the same value. Only partitions whose
    comma count is off get here; most are legal files with quoted commas, which
    :func:`_rows_look_right` clears at numpy speed (the csv module takes ~5 s per 32 MiB).
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise not_utf8_error(part, data) from None
    if _rows_look_right(data, len(part.columns)):
        return
    error = _first_bad_row(part, data)  # exact, and the message; slow, but only on bad input
    if error is not None:
        raise error


def _rows_look_right(data: bytes, fields: int) -> bool:
    """Whether every non-blank line has ``fields`` fields and no quoted field spans lines.

    Vectorised: a comma counts when an even number of quote characters precede it on its
    line (``""`` inside a quoted field keeps the parity), and a line break after an odd number
    is inside a quoted field. A stray quote in an unquoted field can only make this answer
    False, which sends the partition to the exact check.
    """
    import numpy as np

    b = np.frombuffer(data, dtype=np.uint8)
    if not len(b):
        return True
    inside = np.cumsum(b == 34, dtype=np.uint8) & 1  # parity survives the uint8 wrap-around
    breaks = np.flatnonzero(b == 10)
    if inside[breaks].any():
        return False  # a line break inside quotes
    ends = np.append(breaks, len(b)) if breaks.size == 0 or breaks[-1] != len(b) - 1 else breaks
    starts = np.concatenate(([0], ends[:-1] + 1))
    keep = starts < len(b)
    starts, ends = starts[keep], ends[keep]
    commas = np.add.reduceat((b == 44) & (inside == 0), starts, dtype=np.int64)
    # reduceat gives a neighbour's count for an empty line (start == end): those are blank
    nonblank = np.add.reduceat(b > 32, starts, dtype=np.int64) > 0
    nonblank &= ends > starts
    return bool((commas[nonblank] == fields - 1).all())


def not_utf8_error(part: Partition, data: bytes) -> DataError:
    """The error for a partition that is not UTF-8 text, naming the line of the first bad byte."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = lines_before(part) + data.count(b"\n", 0, exc.start) + 1
        return DataError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason}); convert the file to "
            "UTF-8 first, e.g. iconv -f latin1 -t utf-8",
            file=part.file,
            line=line,
        )
    return DataError("not UTF-8 text; convert the file to UTF-8 first", file=part.file)


#: Bytes per read while streaming a partition into the parser: large enough that the
#: per-call overhead vanishes, small enough to stay in cache (one big ``read()`` of a 20 MB
#: partition costs ~10% more, in page faults on fresh memory).
READ_BUFFER = 1 << 20


class _CountingRange(io.RawIOBase):
    """Reads ``size`` bytes from ``raw`` and counts commas and line breaks on the way.

    The counts tell whether every line has the header's number of fields (see
    :meth:`plausible`) at ~3 ms per 20 MB, without keeping the partition's bytes around.
    """

    def __init__(self, raw: Any, size: int) -> None:
        super().__init__()
        self._raw = raw
        self._left = size
        self.commas = 0
        self.newlines = 0
        self.last = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        import numpy as np

        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._raw.readinto(memoryview(buffer)[:n]) or 0
        self._left -= got
        if got:
            chunk = np.frombuffer(buffer, dtype=np.uint8, count=got)
            self.commas += int(np.count_nonzero(chunk == 44))
            self.newlines += int(np.count_nonzero(chunk == 10))
            self.last = bytes(chunk[-1:])
        return got

    def plausible(self, fields: int) -> bool:
        """Whether commas == (fields - 1) x lines: false also for legal quoted commas."""
        lines = self.newlines + (0 if self.last in (b"\n", b"") else 1)
        return self.commas == (fields - 1) * lines


def _partition_bytes(part: Partition) -> bytes:
    with open(part.file, "rb") as f:
        f.seek(part.start)
        return f.read(part.end - part.start)


def malformed_row_error(part: Partition, data: bytes, detail: str = "") -> DataError:
    """The error for the first row of ``data`` whose field count is wrong, or that holds a
    quoted line break (a partition can be cut inside such a field: they are unsupported)."""
    error = _first_bad_row(part, data)
    if error is not None:
        return error
    found = re.search(r"line (\d+)", detail)
    at = lines_before(part) + int(found.group(1)) if found else None
    return DataError(f"malformed CSV ({detail})", file=part.file, line=at)


def _first_bad_row(part: Partition, data: bytes) -> DataError | None:
    expected = len(part.columns)
    before = lines_before(part)
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    try:
        for fields in reader:
            line = before + start
            start = reader.line_num + 1
            if not fields or not "".join(fields).strip():
                continue  # a blank line
            if any("\n" in f or "\r" in f for f in fields):
                return DataError(
                    "a quoted field holds a line break, which allcores data cannot split "
                    "into partitions; remove the line breaks or convert the file to Parquet",
                    file=part.file,
                    line=line,
                )
            if len(fields) != expected:
                raw = lines[line - before - 1] if line - before - 1 < len(lines) else ""
                return DataError(
                    f"expected {expected} fields ({', '.join(part.columns)}), found "
                    f"{len(fields)}: {_clip(raw)!r}",
                    file=part.file,
                    line=line,
                )
    except csv.Error as exc:  # e.g. a quote left open at the end of the partition
        return DataError(f"malformed CSV ({exc})", file=part.file, line=before + start)
    return None


def _find_bad_value(
    part: Partition, data: bytes, columns: list[str] | None, dtype: dict[str, str]
) -> DataError | None:
    import pandas as pd

    raw = pd.read_csv(
        io.BytesIO(data),
        header=None,
        names=list(part.columns),
        usecols=columns,
        dtype=str,
        index_col=False,
        keep_default_na=False,
    )
    for column, kind in dtype.items():
        values = raw[column].str.strip()
        converted = pd.to_numeric(values.where(values != ""), errors="coerce")
        bad = converted.isna() & (values != "")
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            return DataError(
                f"{values.iloc[i]!r} is not a number ({kind})",
                file=part.file,
                line=row_line(part, i, data),
                column=column,
            )
    return None


def lines_before(part: Partition) -> int:
    """How many lines precede the partition (the header included): error path only."""
    count = 0
    with open(part.file, "rb") as f:
        remaining = part.start
        while remaining > 0:
            block = f.read(min(SCAN_BYTES * 16, remaining))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count


def row_line(part: Partition, row: int, data: bytes | None = None) -> int:
    """The 1-based file line of the partition's ``row``-th parsed row (blank lines skipped)."""
    if data is None:
        with open(part.file, "rb") as f:
            f.seek(part.start)
            data = f.read(part.end - part.start)
    line = lines_before(part)
    seen = -1
    for text in data.split(b"\n"):
        line += 1
        if text.strip():
            seen += 1
            if seen == row:
                return line
    return line


def location(part: Partition, row: int) -> dict[str, int]:
    """Keyword arguments for :class:`DataError` that point at a partition's ``row``."""
    if part.format == "csv":
        return {"line": row_line(part, row)}
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(part.file).metadata
    for group in part.row_groups:
        rows = meta.row_group(group).num_rows
        if row < rows:
            return {"row_group": group, "row": row}
        row -= rows
    return {"row_group": part.row_groups[-1], "row": row}


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
