"""allcores.dataframe: parallel apply / map_partitions give pandas' own results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import allcores.dataframe as acdf


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(0)
    n = 3000
    return pd.DataFrame(
        {
            "a": np.arange(n),
            "b": rng.random(n),
            "s": [f"name{i % 13}" for i in range(n)],
        },
        index=pd.RangeIndex(100, 100 + n),
    )


def row_score(row):
    return row["a"] * 2 + len(row["s"]) + row["b"]


@pytest.mark.timeout(60)
def test_apply_rows_equals_dataframe_apply(df):
    expected = df.apply(row_score, axis=1)
    pd.testing.assert_series_equal(acdf.apply(df, row_score, axis=1, workers=2), expected)
    pd.testing.assert_series_equal(
        acdf.apply(df, row_score, axis="columns", workers=2, partitions=7), expected
    )


@pytest.mark.timeout(60)
def test_apply_with_closures_series_results_and_kwargs(df):
    factor = 3
    expand = lambda row, k: pd.Series({"x": row["a"] * factor, "y": row["s"].upper() * k})
    got = acdf.apply(df, expand, axis=1, workers=2, args=(2,))
    pd.testing.assert_frame_equal(got, df.apply(expand, axis=1, args=(2,)))
    listed = acdf.apply(df, lambda r: [r["a"], r["b"]], axis=1, workers=2, result_type="expand")
    pd.testing.assert_frame_equal(
        listed, df.apply(lambda r: [r["a"], r["b"]], axis=1, result_type="expand")
    )


@pytest.mark.timeout(60)
def test_apply_columns_and_series(df):
    wide = pd.DataFrame(np.arange(200 * 12).reshape(200, 12), columns=[f"c{i}" for i in range(12)])
    pd.testing.assert_series_equal(
        acdf.apply(wide, lambda c: c.max() - c.min(), axis=0, workers=2),
        wide.apply(lambda c: c.max() - c.min(), axis=0),
    )
    pd.testing.assert_frame_equal(
        acdf.apply(wide, lambda c: c * 2, axis="index", workers=2),
        wide.apply(lambda c: c * 2, axis=0),
    )
    pd.testing.assert_series_equal(
        acdf.apply(df["s"], str.upper, workers=2), df["s"].apply(str.upper)
    )


@pytest.mark.timeout(60)
def test_map_partitions_concat_and_list(df):
    counts = acdf.map_partitions(df, lambda p: p.groupby("s").size(), workers=2, partitions=5)
    pd.testing.assert_series_equal(counts.groupby(level=0).sum(), df.groupby("s").size())
    sizes = acdf.map_partitions(df, len, workers=2, partitions=5)
    assert sizes == [600] * 5
    pieces = acdf.map_partitions(df, lambda p: p, workers=2, combine="list")
    pd.testing.assert_frame_equal(pd.concat(pieces), df)


def test_partitions_are_views_not_copies(df):
    numeric = df[["a", "b"]]
    parts = acdf._row_parts(numeric, workers=2, partitions=4)
    assert sum(len(p) for p in parts) == len(numeric)
    assert all(np.shares_memory(p["a"].to_numpy(), numeric["a"].to_numpy()) for p in parts)


@pytest.mark.timeout(60)
def test_errors(df):
    with pytest.raises(ZeroDivisionError):
        acdf.apply(df, lambda row: 1 / 0, axis=1, workers=2)
    with pytest.raises(TypeError, match="pandas DataFrame"):
        acdf.apply([1, 2, 3], abs)
    with pytest.raises(ValueError, match="axis"):
        acdf.apply(df, abs, axis=2)
    with pytest.raises(ValueError, match="combine"):
        acdf.map_partitions(df, len, combine="sum")


def test_small_and_empty_frames_stay_in_process(df):
    small = df.head(5)
    pd.testing.assert_series_equal(
        acdf.apply(small, row_score, axis=1), small.apply(row_score, axis=1)
    )
    empty = df.head(0)
    pd.testing.assert_frame_equal(
        acdf.apply(empty, row_score, axis=1), empty.apply(row_score, axis=1)
    )


def test_partitions_pickle_their_columns_out_of_band():
    # what the engine does with each partition: protocol 5, big buffers lifted out of the
    # pickle (then into shared memory); only a small header may stay in-band
    import pickle

    n = 200_000
    # pandas 3 stores strings in Arrow by default; pandas 2 (the newest on Python 3.10) keeps
    # them as Python objects, pickled in-band, unless asked for the same Arrow dtype.
    strings = ["xyz"] * n if int(pd.__version__.split(".")[0]) >= 3 else pd.array(
        ["xyz"] * n, dtype="string[pyarrow]")
    frame = pd.DataFrame({"a": np.arange(n), "b": np.ones(n), "s": strings})
    part = acdf._row_parts(frame, workers=2, partitions=4)[1]
    buffers = []
    inband = pickle.dumps(part, protocol=5, buffer_callback=buffers.append)
    assert len(inband) < 4096
    assert sum(memoryview(b).nbytes for b in buffers) >= 2 * 8 * n // 4
    pd.testing.assert_frame_equal(pickle.loads(inband, buffers=buffers), part)
