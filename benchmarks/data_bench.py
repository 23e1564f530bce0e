"""Issue 6's data benchmark: RFM over a 5-million-row CSV, and dataframe.apply.

    python benchmarks/data_bench.py                          # full size (~3 min on 2 cores)
    python benchmarks/data_bench.py --rows 200000 --apply-rows 20000 --rounds 1   # smoke test
    python benchmarks/data_bench.py --only rfm --json data.json

RFM (the same per-customer analysis, same result checked; 2 workers):
  pandas      single process: pd.read_csv(usecols=...) then allcores.data.rfm_frame(df)
  allcores-1  allcores.data.rfm(path, workers=1): the partitioned reader in this process
  allcores    allcores.data.rfm(path, workers=2): workers read their own byte ranges
  pyarrow     the multi-threaded engine at hand (DuckDB and Polars are not installed):
              pyarrow.csv.read_csv + Table.group_by().aggregate, then the same scoring

dataframe.apply (a pure-Python row function, same result checked):
  pandas       df.apply(row_fn, axis=1)
  allcores     allcores.dataframe.apply(df, row_fn, axis=1, workers=2)
  pandarallel  df.parallel_apply(row_fn, axis=1), nb_workers=2 (pandarallel 1.6.5 imports two
               classes pandas 3 renamed; this script aliases them before importing it)

Bars: RFM >= 1.7x pandas; apply >= 1.8x DataFrame.apply and no slower than pandarallel.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import _harness  # noqa: E402
from _harness import measure  # noqa: E402

WORKERS = 2
RFM_COLUMNS = ["customer_id", "date", "amount"]


def row_fn(row):
    """Pure Python per row: a checksum of the name, scaled by the row's numbers."""
    total = 0
    for ch in row["name"]:
        total = (total * 31 + ord(ch)) % 1_000_003
    return total * row["score"] + row["id"] % 7


def sample_file(rows: int, folder: str) -> str:
    from allcores.data import write_sample

    path = os.path.join(folder, f"transactions-{rows}.csv")
    if not os.path.exists(path):  # deterministic: a file left by an earlier run is the same
        print(f"writing {rows:,} sample rows to {path} ...", flush=True)
        write_sample(path, rows, seed=0)
    return path


def rfm_pandas(path: str):
    from allcores.data import rfm_frame

    return rfm_frame(pd.read_csv(path, usecols=RFM_COLUMNS))


def rfm_pyarrow(path: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from allcores.data._rfm import rfm_finalize

    options = pacsv.ConvertOptions(
        include_columns=RFM_COLUMNS, column_types={"date": pa.timestamp("s")}
    )
    table = pacsv.read_csv(path, convert_options=options)
    g = (
        table.group_by("customer_id")
        .aggregate([("date", "max"), ("amount", "count"), ("amount", "sum")])
        .to_pandas()
    )
    partial = pd.DataFrame(
        {
            "last": g["date_max"].to_numpy(),
            "frequency": g["amount_count"].to_numpy(),
            "monetary": g["amount_sum"].to_numpy(),
        },
        index=pd.Index(g["customer_id"].to_numpy(), name="customer_id"),
    )
    return rfm_finalize([partial])


def same_rfm(expected):
    def check(got):
        pd.testing.assert_frame_equal(
            got.drop(columns="monetary"), expected.drop(columns="monetary"), check_dtype=False
        )
        assert np.allclose(got["monetary"], expected["monetary"], rtol=0, atol=0.0051)

    return check


def bench_rfm(args, results):
    from allcores import data

    path = sample_file(args.rows, args.dir)
    size = os.path.getsize(path) / 1e6
    print(f"RFM over {args.rows:,} rows ({size:.0f} MB, {len(data.plan(path))} partitions)")
    expected = rfm_pandas(path)
    check = same_rfm(expected)
    row = results.setdefault("RFM", {})
    row["pandas"] = measure(lambda: rfm_pandas(path), rounds=args.rounds, check=check)
    row["allcores-1"] = measure(lambda: data.rfm(path, workers=1), rounds=args.rounds, check=check)
    row["allcores"] = measure(
        lambda: data.rfm(path, workers=WORKERS), rounds=args.rounds, check=check
    )
    row["pyarrow"] = measure(lambda: rfm_pyarrow(path), rounds=args.rounds, check=check)


def import_pandarallel():
    import pandas.core.window.expanding as expanding
    import pandas.core.window.rolling as rolling

    # pandarallel 1.6.5 imports the pandas < 3 spellings of these two classes
    if not hasattr(expanding, "ExpandingGroupby"):
        expanding.ExpandingGroupby = expanding.ExpandingGroupBy
    if not hasattr(rolling, "RollingGroupby"):
        rolling.RollingGroupby = rolling.RollingGroupBy
    from pandarallel import pandarallel

    pandarallel.initialize(nb_workers=WORKERS, progress_bar=False, verbose=0)


def bench_apply(args, results):
    import allcores.dataframe as acdf

    n = args.apply_rows
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "score": rng.random(n),
            "name": [f"customer-{i % 9973}-{i % 13}" for i in range(n)],
        }
    )
    print(f"dataframe.apply over {n:,} rows, pure-Python row function")
    expected = df.apply(row_fn, axis=1)

    def check(got):
        pd.testing.assert_series_equal(got, expected)

    row = results.setdefault("apply", {})
    row["pandas"] = measure(lambda: df.apply(row_fn, axis=1), rounds=args.rounds, check=check)
    row["allcores"] = measure(
        lambda: acdf.apply(df, row_fn, axis=1, workers=WORKERS), rounds=args.rounds, check=check
    )
    try:
        import_pandarallel()
    except Exception as exc:  # recorded in the table, not fatal
        row["pandarallel"] = _harness.Timing(error=f"{type(exc).__name__}: {exc}")
    else:
        row["pandarallel"] = measure(
            lambda: df.parallel_apply(row_fn, axis=1), rounds=args.rounds, check=check
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="CSV rows for RFM")
    parser.add_argument("--apply-rows", type=int, default=1_000_000, help="rows for apply")
    parser.add_argument(
        "--dir",
        default=os.path.join(tempfile.gettempdir(), "allcores-bench"),
        help="where the sample CSV is written (and reused)",
    )
    _harness.add_common_args(parser)
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    chosen = _harness.pick(args.only, ["rfm", "apply"], "workload")

    import allcores

    print(_harness.machine_line())
    allcores.map(abs, range(WORKERS), workers=WORKERS)  # the shared pool up before timing
    results: dict = {}
    if "rfm" in chosen:
        bench_rfm(args, results)
    if "apply" in chosen:
        bench_apply(args, results)

    print()
    systems = ["pandas", "allcores-1", "allcores", "pyarrow", "pandarallel"]
    for name, row in results.items():
        print(f"{name}:")
        print(
            _harness.render_table(
                {name: row}, systems=[s for s in systems if s in row], baseline="pandas"
            )
        )
        print()

    bars = []
    if "RFM" in results:
        r = _harness.ratio(results["RFM"], "pandas", "allcores")
        bars.append(("RFM >= 1.7x single-process pandas", r is not None and r >= 1.7, r))
        par = _harness.ratio(results["RFM"], "allcores-1", "allcores")
        print(
            f"RFM, allcores 2 workers vs 1 worker (parallel speedup alone): {par:.2f}x"
            if par
            else "RFM parallel speedup: n/a"
        )
    if "apply" in results:
        r = _harness.ratio(results["apply"], "pandas", "allcores")
        bars.append(("dataframe.apply >= 1.8x DataFrame.apply", r is not None and r >= 1.8, r))
        r = _harness.ratio(results["apply"], "pandarallel", "allcores")
        bars.append(("dataframe.apply no slower than pandarallel", r is not None and r >= 1.0, r))
    for name, ok, value in bars:
        shown = f"{value:.2f}x" if value is not None else "n/a"
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {shown}")
    if args.json:
        _harness.write_json(
            args.json,
            {
                "machine": _harness.machine_info(),
                "rows": args.rows,
                "apply_rows": args.apply_rows,
                "results": results,
                "bars": [{"bar": n, "pass": ok, "value": v} for n, ok, v in bars],
            },
        )
    return 0 if all(ok for _, ok, _ in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
