"""A deterministic synthetic transactions table, so demos and tests need no download."""

from __future__ import annotations

import os
from typing import Any

from allcores.data._output import atomic_output

__all__ = ["SAMPLE_COLUMNS", "write_sample"]

SAMPLE_COLUMNS = ("customer_id", "date", "amount", "country", "channel")
#: Rows generated per random stream (chunk k draws from SeedSequence(seed).spawn(...)[k]), so
#: the file depends only on ``rows`` and ``seed``, and memory stays bounded for any size.
SAMPLE_CHUNK_ROWS = 250_000
#: Rows per Parquet row group, the unit a worker reads: at most this many (a 2-million-row
#: file has 8 groups), and at least 8 groups for smaller files down to MIN_ROW_GROUP rows each.
SAMPLE_ROW_GROUP = 250_000
MIN_ROW_GROUP = 10_000
ROW_GROUPS_WANTED = 8
#: Transactions per customer on average: close to public retail data sets (Online Retail
#: has about 130), and enough for recency/frequency to spread customers over segments.
ROWS_PER_CUSTOMER = 50
FIRST_DAY = "2023-01-01"
DAYS = 730
COUNTRIES = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "SE", "PL", "JP")
COUNTRY_WEIGHTS = (0.34, 0.16, 0.12, 0.09, 0.06, 0.06, 0.05, 0.05, 0.04, 0.03)
CHANNELS = ("web", "app", "store", "phone")
CHANNEL_WEIGHTS = (0.45, 0.3, 0.2, 0.05)


def write_sample(path: str | os.PathLike[str], rows: int, *, seed: int = 0) -> str:
    """Write ``rows`` synthetic transactions to a CSV or Parquet file (by suffix).

    Columns: ``customer_id`` (int), ``date`` (YYYY-MM-DD, 2023-2024), ``amount`` (2 decimals),
    ``country`` (ISO code) and ``channel``. Customers differ in how often they buy and when
    they stopped buying, so an RFM analysis finds every segment. The same ``rows`` and
    ``seed`` always give the same bytes. The file appears only when complete.

    Example::

        >>> write_sample("transactions.csv", 2_000_000)        # doctest: +SKIP
        'transactions.csv'
    """
    import numpy as np
    import pyarrow as pa

    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive int, got {rows!r}")
    p = os.fspath(path)
    customers = max(1, rows // ROWS_PER_CUSTOMER)
    parquet = p.lower().endswith((".parquet", ".pq", ".parq"))
    group = max(MIN_ROW_GROUP, min(SAMPLE_ROW_GROUP, -(-rows // ROW_GROUPS_WANTED)))
    with atomic_output(p) as tmp, open(tmp, "wb") as sink:
        writer: Any = None
        try:
            for first in range(0, rows, SAMPLE_CHUNK_ROWS):
                n = min(SAMPLE_CHUNK_ROWS, rows - first)
                rng = np.random.default_rng(
                    np.random.SeedSequence(seed, spawn_key=(first // SAMPLE_CHUNK_ROWS,))
                )
                table = _chunk(rng, n, customers, np, pa)
                if writer is None:
                    writer = _open_writer(sink, table.schema, parquet)
                if parquet:
                    writer.write_table(table, row_group_size=group)
                else:
                    writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    return p


def _open_writer(sink: Any, schema: Any, parquet: bool) -> Any:
    if parquet:
        import pyarrow.parquet as pq

        return pq.ParquetWriter(sink, schema)
    import pyarrow.csv as pcsv

    sink.write((",".join(schema.names) + "\n").encode())  # pyarrow would quote the names
    sink.flush()
    options = pcsv.WriteOptions(include_header=False, quoting_style="none")
    return pcsv.CSVWriter(sink, schema, write_options=options)


def _chunk(rng: Any, n: int, customers: int, np: Any, pa: Any) -> Any:
    # Skewed customer activity: low ids buy far more often (u**2 piles mass near 0).
    customer = (customers * rng.random(n) ** 2).astype(np.int64)
    # Each customer buys until a personal "last active" day (a fixed hash of the id), so
    # recency varies from days to more than a year.
    active = (0.25 + 0.75 * ((customer * 2654435761) % 1000) / 1000.0) * DAYS
    day = (rng.random(n) * active).astype(np.int64)
    date = np.datetime64(FIRST_DAY, "D") + day
    amount = np.round(rng.lognormal(3.3, 0.9, n) * (1.0 + (customer % 7) / 7.0), 2)
    country = np.array(COUNTRIES)[rng.choice(len(COUNTRIES), n, p=COUNTRY_WEIGHTS)]
    channel = np.array(CHANNELS)[rng.choice(len(CHANNELS), n, p=CHANNEL_WEIGHTS)]
    return pa.table(
        {
            "customer_id": customer + 1,
            "date": pa.array(date, type=pa.date32()),
            "amount": amount,
            "country": country,
            "channel": channel,
        }
    )
