"""allcores.data: partitioning, RFM, --apply, the sample generator and located errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allcores import data
from allcores.data import DataError

HEADER = "customer_id,date,amount\n"


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "tx.csv"
    data.write_sample(path, 60_000, seed=1)
    return str(path)


@pytest.fixture(scope="module")
def sample_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "tx.parquet"
    data.write_sample(path, 60_000, seed=1)
    return str(path)


def write(path, text):
    path.write_text(text)
    return str(path)


# --- the sample generator -------------------------------------------------------------------


def test_sample_is_deterministic_and_has_the_documented_columns(tmp_path, sample_csv):
    again = data.write_sample(tmp_path / "again.csv", 60_000, seed=1)
    with open(sample_csv, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()
    other = data.write_sample(tmp_path / "other.csv", 60_000, seed=2)
    df = pd.read_csv(sample_csv)
    assert tuple(df.columns) == data.SAMPLE_COLUMNS
    assert len(df) == 60_000
    assert not df.equals(pd.read_csv(other))
    assert df["amount"].gt(0).all() and df["date"].str.match(r"^202[34]-\d\d-\d\d$").all()
    assert set(df["channel"]) == {"web", "app", "store", "phone"}


def test_sample_parquet_has_the_same_rows_in_row_groups(sample_csv, sample_parquet):
    meta = pq.ParquetFile(sample_parquet).metadata
    assert meta.num_rows == 60_000 and meta.num_row_groups == 6  # 10,000-row minimum
    csv = pd.read_csv(sample_csv)
    par = pd.read_parquet(sample_parquet)
    assert (par["customer_id"].to_numpy() == csv["customer_id"].to_numpy()).all()
    assert np.allclose(par["amount"].to_numpy(), csv["amount"].to_numpy())


# --- partitioning -----------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**6)), min_size=1, max_size=60),
    count=st.integers(1, 12),
    trailing_newline=st.booleans(),
)
def test_csv_partitions_hold_whole_lines_and_cover_the_file(
    tmp_path, rows, count, trailing_newline
):
    text = "a,b\n" + "\n".join(f"{a},{c}" for a, c in rows) + ("\n" if trailing_newline else "")
    path = write(tmp_path / "p.csv", text)
    parts = data.plan(path, count)
    raw = (tmp_path / "p.csv").read_bytes()
    assert parts[0].start == len(b"a,b\n") and parts[-1].end == len(raw)
    for p, q in zip(parts, parts[1:]):
        assert p.end == q.start and raw[p.end - 1 : p.end] == b"\n"
    assert 1 <= len(parts) <= count
    pieces = pd.concat([data.read_partition(p) for p in parts], ignore_index=True)
    assert pieces.equals(pd.read_csv(path))


def test_crlf_bom_quoted_commas_and_no_final_newline(tmp_path):
    rows = [f'{i},2024-01-{i % 28 + 1:02d},{i}.25,"Smith, J{i}"' for i in range(300)]
    path = tmp_path / "w.csv"
    path.write_bytes(("\ufeffcustomer_id,date,amount,name\r\n" + "\r\n".join(rows)).encode())
    parts = data.plan(path, 5)
    assert parts[0].columns == ("customer_id", "date", "amount", "name")
    got = data.analyze(path, lambda df: df, columns=["amount", "name"], partitions=5, workers=1)
    assert got["name"].tolist() == [f"Smith, J{i}" for i in range(300)]
    assert data.rfm(path, partitions=5, workers=1)["frequency"].sum() == 300


def test_partition_count_depends_on_file_size_only(sample_csv):
    parts = data.plan(sample_csv)
    # ~1.75 MB: the small-file rule gives one partition per started MiB
    assert len(parts) == -(-os.path.getsize(sample_csv) // data._partition.MIN_PARTITION_BYTES)
    assert [p.index for p in parts] == list(range(len(parts)))


def test_parquet_partitions_are_row_groups(tmp_path):
    path = tmp_path / "g.parquet"
    pq.write_table(pa.table({"x": list(range(100))}), path, row_group_size=10)
    parts = data.plan(path)
    assert [p.row_groups for p in parts] == [(i,) for i in range(10)]
    assert [len(p.row_groups) for p in data.plan(path, 3)] == [3, 3, 4]
    assert pd.concat(data.read_partition(p) for p in parts)["x"].tolist() == list(range(100))


# --- RFM ----------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_rfm_matches_single_process_pandas_for_any_workers(sample_csv, sample_parquet):
    expected = data.rfm_frame(pd.read_csv(sample_csv, usecols=["customer_id", "date", "amount"]))
    one = data.rfm(sample_csv, workers=1)
    two = data.rfm(sample_csv, workers=2)
    par = data.rfm(sample_parquet, workers=2)
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(one, par)
    pd.testing.assert_frame_equal(one.drop(columns="monetary"), expected.drop(columns="monetary"))
    assert np.allclose(one["monetary"], expected["monetary"], rtol=0, atol=0.0051)
    assert one["frequency"].sum() == 60_000
    assert list(one.columns) == [
        "customer_id",
        "last_purchase",
        "recency_days",
        "frequency",
        "monetary",
        "r_score",
        "f_score",
        "m_score",
        "segment",
    ]
    assert one["customer_id"].is_monotonic_increasing
    assert set(one["segment"]) == {s for row in data.SEGMENTS for s in row}  # every segment seen


def test_rfm_scores_and_segments_on_a_tiny_table():
    df = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 2, 3, 3],
            "date": [
                "2024-01-10",
                "2024-01-20",
                "2024-01-30",
                "2023-01-01",
                "2024-01-29",
                "2024-01-01",
            ],
            "amount": [10.0, 20.0, 30.0, 5.0, 1.0, 2.0],
        }
    )
    out = data.rfm_frame(df, as_of="2024-01-31").set_index("customer_id")
    assert out.loc[1, "recency_days"] == 1 and out.loc[2, "recency_days"] == 395
    assert out.loc[1, "frequency"] == 3 and out.loc[1, "monetary"] == 60.0
    assert out.loc[1, "segment"] == "champion"
    assert out.loc[2, "segment"] == "hibernating" and out.loc[3, "segment"] == "need attention"
    assert out[["r_score", "f_score"]].to_dict("index") == {
        1: {"r_score": 5, "f_score": 5},
        2: {"r_score": 1, "f_score": 1},
        3: {"r_score": 3, "f_score": 3},
    }


# --- bad input ----------------------------------------------------------------------------------

BAD_CSV = [
    # (name, text, line, column, words)
    ("empty", "", 1, None, "empty"),
    ("header_only", HEADER, 2, None, "no data rows"),
    (
        "bad_amount",
        HEADER + "1,2024-01-01,3.5\n2,2024-01-02,abc\n",
        3,
        "amount",
        "'abc' is not a number",
    ),
    ("bad_date", HEADER + "1,2024-01-01,3.5\n\n2,2024-13-02,4\n", 4, "date", "not a date"),
    ("too_many_first", HEADER + "1,2024-01-01,3.5,9\n2,2024-01-02,4\n", 2, None, "found 4"),
    ("too_many_later", HEADER + "1,2024-01-01,3.5\n2,2024-01-02,4,7\n", 3, None, "found 4"),
    ("too_few", HEADER + "1,2024-01-01,3.5\n2,2024-01-02\n", 3, None, "expected 3 fields"),
    ("missing_column", "customer_id,day,amount\n1,2024-01-01,3.5\n", 1, "date", "no such column"),
    ("missing_value", HEADER + "1,2024-01-01,3.5\n,2024-01-02,5\n", 3, "customer_id", "missing"),
]


@pytest.mark.parametrize(
    ("name", "text", "line", "column", "words"), BAD_CSV, ids=[c[0] for c in BAD_CSV]
)
def test_bad_csv_names_file_line_and_column(tmp_path, name, text, line, column, words):
    path = write(tmp_path / f"{name}.csv", text)
    with pytest.raises(DataError, match=words) as info:
        data.rfm(path, workers=1)
    err = info.value
    assert (err.file, err.line, err.column) == (path, line, column)
    assert str(err).startswith(f"{path}, line {line}")


@pytest.mark.timeout(60)
def test_error_in_a_worker_keeps_the_absolute_line(tmp_path):
    lines = [f"{i % 50},2024-01-{i % 28 + 1:02d},{i}.5" for i in range(4000)]
    lines[3500] = "7,2024-01-05,oops"
    path = write(tmp_path / "late.csv", HEADER + "\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        data.rfm(path, workers=2, partitions=4)
    assert (info.value.line, info.value.column) == (3502, "amount")  # header + 0-based 3500 + 1


def test_data_error_survives_pickling():
    err = DataError("bad", file="f.csv", line=3, column="amount")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.line, back.column) == (DataError, str(err), 3, "amount")
    assert isinstance(back, ValueError)


def test_bad_parquet_names_row_group_row_and_column(tmp_path):
    path = tmp_path / "bad.parquet"
    amounts = [str(i) for i in range(30)]
    amounts[17] = "n/a"
    table = pa.table(
        {"customer_id": list(range(30)), "date": ["2024-01-01"] * 30, "amount": amounts}
    )
    pq.write_table(table, path, row_group_size=10)
    with pytest.raises(DataError, match="'n/a' is not a number") as info:
        data.rfm(path, workers=1)
    assert (info.value.row_group, info.value.row, info.value.column) == (1, 7, "amount")
    empty = tmp_path / "empty.parquet"
    pq.write_table(table.slice(0, 0), empty)
    with pytest.raises(DataError, match="no rows"):
        data.rfm(empty, workers=1)
    with pytest.raises(DataError, match="no such column") as info:
        data.rfm(_write_parquet(tmp_path / "nocol.parquet", {"customer_id": [1]}), workers=1)
    assert info.value.column == "date"


def _write_parquet(path, columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_missing_file_and_compressed_csv(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.rfm(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="decompress it first"):
        data.plan(write(tmp_path / "x.csv.gz", "a\n1\n"))


# --- analyze ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_analyze_concat_reduce_and_list(sample_csv):
    whole = pd.read_csv(sample_csv)
    rows = data.analyze(sample_csv, lambda df: df[df["amount"] > 500], workers=2)
    pd.testing.assert_frame_equal(
        rows.reset_index(drop=True), whole[whole["amount"] > 500].reset_index(drop=True)
    )
    doubled = data.analyze(sample_csv, lambda df: df.assign(twice=df["amount"] * 2), workers=2)
    assert doubled.index.equals(pd.RangeIndex(60_000))  # untouched row labels: renumbered
    by_country = data.analyze(
        sample_csv,
        lambda df: df.groupby("country")["amount"].sum(),
        combine=lambda a, b: a.add(b, fill_value=0),
        columns=["country", "amount"],
        workers=2,
    )
    expected = whole.groupby("country")["amount"].sum()
    assert np.allclose(by_country.sort_index(), expected.sort_index())
    counts = data.analyze(sample_csv, len, combine="list", workers=2)
    assert sum(counts) == 60_000 and len(counts) == len(data.plan(sample_csv))


def test_analyze_errors(sample_csv):
    with pytest.raises(DataError, match="no such column") as info:
        data.analyze(sample_csv, len, columns=["price"])
    assert info.value.column == "price" and info.value.line == 1
    with pytest.raises(TypeError, match="combine='list'"):
        data.analyze(sample_csv, len, workers=1)
    with pytest.raises(ZeroDivisionError):
        data.analyze(sample_csv, lambda df: 1 / 0, workers=2)


def test_write_output_leaves_nothing_on_failure(tmp_path):
    class Exploding(pd.DataFrame):
        def to_csv(self, path, **kwargs):
            with open(path, "w") as f:
                f.write("half a file")
            raise OSError("disk full")

    target = tmp_path / "out.csv"
    with pytest.raises(OSError, match="disk full"):
        data.write_output(Exploding({"a": [1]}), target)
    assert os.listdir(tmp_path) == []


# --- CLI --------------------------------------------------------------------------------------


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "allcores", "data", *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
    )


@pytest.mark.timeout(120)
def test_cli_sample_then_rfm(tmp_path):
    path = tmp_path / "tx.csv"
    made = cli("--sample", "2e4", str(path), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["rows"] == 20_000 and path.exists()
    out = tmp_path / "rfm.parquet"
    run = cli(str(path), "--workers", "2", "--json", "-o", str(out))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["rows"] == 20_000 and sum(report["segments"].values()) == report["customers"]
    assert len(pd.read_parquet(out)) == report["customers"]
    text = cli(str(path), "--workers", "1")
    assert text.returncode == 0 and "20,000 transactions" in text.stdout


@pytest.mark.timeout(120)
def test_cli_apply_with_reduce_from_the_current_folder(tmp_path):
    (tmp_path / "mystats.py").write_text(
        "def spend(df):\n    return df.groupby('channel')['amount'].sum()\n"
        "def merge(a, b):\n    return a.add(b, fill_value=0)\n"
        "def rows(df):\n    return len(df)\n"
    )
    data.write_sample(tmp_path / "tx.csv", 20_000)
    run = cli(
        "tx.csv",
        "--apply",
        "mystats:spend",
        "--reduce",
        "mystats:merge",
        "--workers",
        "2",
        "--json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)["result"]
    assert sorted(result["index"]) == ["app", "phone", "store", "web"]
    rows = cli("tx.csv", "--apply", "mystats:rows", "--json", "--partitions", "3", cwd=tmp_path)
    assert (
        json.loads(rows.stdout)["result"] == [6667, 6667, 6666]
        or sum(json.loads(rows.stdout)["result"]) == 20_000
    )
    bad = cli("tx.csv", "--apply", "nostats:spend", cwd=tmp_path)
    assert bad.returncode == 2 and "cannot import module 'nostats'" in bad.stderr


def test_cli_bad_input_exits_1_and_leaves_no_output(tmp_path):
    path = write(tmp_path / "bad.csv", HEADER + "1,2024-01-01,3.5\n2,2024-01-02,abc\n")
    out = tmp_path / "rfm.csv"
    run = cli(path, "-o", str(out), "--workers", "1")
    assert run.returncode == 1
    assert f"{path}, line 3, column 'amount'" in run.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]
