"""``allcores data``: analyse a large CSV or Parquet file on every core.

allcores data --sample 2000000 transactions.csv      # deterministic demo data
allcores data transactions.csv                       # per-customer RFM summary
allcores data transactions.csv -o rfm.parquet        # ... the full table, written whole
allcores data transactions.csv --apply mystats:summary --reduce mystats:merge --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from allcores.cli import add_backend_args, count_arg


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "data",
        help="per-customer RFM or your own analysis over a large CSV/Parquet file, on every core",
        description="Analyse a CSV or Parquet file on every core: workers read their own "
        "partitions (CSV byte ranges cut at line breaks, Parquet row groups). The built-in "
        "analysis is a per-customer RFM summary of a transactions table "
        "(customer_id, date, amount).",
    )
    p.add_argument("file", help="input CSV (with a header line) or Parquet file")
    p.add_argument(
        "--sample",
        type=count_arg,
        metavar="ROWS",
        default=None,
        help="instead of analysing FILE, write ROWS synthetic transactions to it",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument(
        "--apply",
        metavar="MODULE:FUNCTION",
        default=None,
        help="run FUNCTION(partition_dataframe) instead of RFM. This runs the module's code: "
        "use trusted modules only (imported from the current folder or PYTHONPATH)",
    )
    p.add_argument(
        "--reduce",
        metavar="MODULE:FUNCTION",
        default=None,
        help="combine --apply results pairwise with FUNCTION(a, b) (default: concatenate); "
        "runs that module's code too",
    )
    p.add_argument("--columns", default=None, help="comma-separated columns to read (--apply)")
    p.add_argument(
        "--as-of",
        default=None,
        metavar="DATE",
        help="RFM reference date (default: the day after the last purchase)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="write the result table here (.csv or .parquet); written whole or not at all",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="number of partitions (default: from the file size)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    add_backend_args(p)
    p.add_argument("--json", action="store_true",
                   help="print the outcome as one JSON object (run statistics under \"stats\")")
    p.add_argument("--report", metavar="FILE.html", default=None,
                   help="write an HTML report of where the run's time went")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    for module in ("pandas", "pyarrow", "numpy"):
        try:
            __import__(module)
        except ImportError:
            from allcores.cli import missing_extra

            raise missing_extra(module, "data") from None
    from allcores._batch import BatchRun
    from allcores.data import DataError

    started = time.perf_counter()
    try:
        # The one door to the engine: worker check, statistics, report (checked before work).
        args.batch = BatchRun(args.workers, tool="data", report=args.report)
        args.workers_used = args.batch.workers
    except (ValueError, OSError, ImportError) as exc:
        print(f"allcores data: {exc}", file=sys.stderr)
        return 2
    try:
        if args.sample is not None:
            out = _sample(args)
        elif args.apply is not None:
            out = _apply(args)
        else:
            if args.reduce or args.columns:
                print("allcores data: --reduce and --columns go with --apply", file=sys.stderr)
                return 2
            out = _rfm(args)
    except DataError as exc:
        print(f"allcores data: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad --apply spec, bad --as-of, bad option values
        print(f"allcores data: {exc}", file=sys.stderr)
        return 2
    out["seconds"] = time.perf_counter() - started
    if args.sample is None:
        out["stats"] = args.batch.stats.to_dict()
        if args.report:
            out["report"] = args.report
    text = out.pop("_text", "")
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print(text + f"{out['seconds']:.2f} s")
        if out.get("report"):
            print(f"report: {out['report']}")
    return 0


def _sample(args: argparse.Namespace) -> dict[str, Any]:
    from allcores.data import write_sample

    write_sample(args.file, args.sample, seed=args.seed)
    size = os.path.getsize(args.file)
    return {
        "file": args.file,
        "rows": args.sample,
        "seed": args.seed,
        "bytes": size,
        "_text": f"wrote {args.sample:,} transactions to {args.file} ({size / 1e6:.1f} MB), ",
    }


def _rfm(args: argparse.Namespace) -> dict[str, Any]:
    from allcores.data import plan, rfm, write_output

    parts = plan(args.file, args.partitions)
    table = rfm(args.file, as_of=args.as_of, workers=args.workers, partitions=args.partitions,
                _run=args.batch)
    if args.output:
        write_output(table, args.output)
    segments = table["segment"].value_counts().to_dict()
    out: dict[str, Any] = {
        "file": args.file,
        "analysis": "rfm",
        "rows": int(table["frequency"].sum()),
        "customers": len(table),
        "partitions": len(parts),
        "workers": args.workers_used,
        "output": args.output,
        "segments": segments,
    }
    lines = [
        f"{out['rows']:,} transactions, {out['customers']:,} customers, {len(parts)} partitions"
    ]
    lines += [f"  {name:<20} {count:>9,}" for name, count in segments.items()]
    if args.output:
        lines.append(f"wrote the per-customer table to {args.output}")
    out["_text"] = "\n".join(lines) + "\n"
    return out


def _apply(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from allcores.data import _combine, analyze, plan, write_output
    from allcores.data._plugin import load_function

    fn = load_function(args.apply)
    combine: Any = load_function(args.reduce) if args.reduce else "concat"
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    parts = plan(args.file, args.partitions)
    reduce_fn = combine if args.reduce else "list"
    result = analyze(
        args.file,
        fn,
        combine=reduce_fn,
        columns=columns,
        workers=args.workers,
        partitions=args.partitions,
        _run=args.batch,
    )
    # without --reduce, frames are concatenated; anything else is listed in file order
    if not args.reduce and all(isinstance(r, (pd.DataFrame, pd.Series)) for r in result):
        result = _combine(result, "concat")
    out: dict[str, Any] = {
        "file": args.file,
        "analysis": args.apply,
        "reduce": args.reduce,
        "partitions": len(parts),
        "workers": args.workers_used,
        "output": args.output,
    }
    if isinstance(result, pd.Series):
        result = result.to_frame()
    if isinstance(result, pd.DataFrame):
        out["rows"] = len(result)
        if args.output:
            write_output(result, args.output)
            out["_text"] = f"wrote {len(result):,} rows to {args.output}, "
        else:
            out["result"] = json.loads(result.to_json(orient="split", date_format="iso"))
            out["_text"] = result.to_string(max_rows=40) + "\n"
    else:
        if args.output:
            raise ValueError("-o needs a DataFrame or Series result")
        out["result"] = result
        out["_text"] = f"{result}\n"
    return out
