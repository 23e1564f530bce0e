"""allcores.simulate: streaming moments, reproducibility across workers/chunking, models, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import allcores
from allcores.simulate import (
    BLOCK_SAMPLES,
    AsianOption,
    EuropeanOption,
    Moments,
    SimulationResult,
    black_scholes,
    pi,
)
from allcores.simulate._core import _run_task

# Several blocks, the last one partial, so chunking and merging have something to do.
N = 5 * BLOCK_SAMPLES + 1234


def uniform(rng, n):
    return rng.random(n)


def offset_normal(rng, n):
    return 1e6 + rng.standard_normal(n)  # far from zero: naive variance would lose every digit


# --- streaming moments ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=200),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_merged_moments_equal_the_moments_of_all_samples(values, cuts):
    cuts = sorted({0, len(values), *(c % (len(values) + 1) for c in cuts)})
    merged = Moments()
    for a, b in zip(cuts, cuts[1:]):
        merged = merged.merge(Moments.of(values[a:b]))
    x = np.asarray(values)
    assert merged.n == len(values)
    assert merged.mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-6)
    assert merged.variance == pytest.approx(x.var(ddof=1), rel=1e-7, abs=1e-3)


def test_moments_are_stable_far_from_zero():
    rng = np.random.default_rng(3)
    x = 1e9 + rng.standard_normal(100_000)
    merged = Moments()
    for piece in np.array_split(x, 17):
        merged = merged.merge(Moments.of(piece))
    assert merged.std == pytest.approx(x.std(ddof=1), rel=1e-6)


def test_pi_moments_shortcut_matches_the_array_path():
    a = pi.moments(np.random.default_rng(11), 100_000)
    b = Moments.of(pi(np.random.default_rng(11), 100_000))
    assert a.n == b.n
    assert a.mean == pytest.approx(b.mean, rel=1e-12)
    assert a.m2 == pytest.approx(b.m2, rel=1e-9)


def test_block_streams_are_the_spawned_children_of_the_seed():
    # block k must draw from SeedSequence(seed).spawn(...)[k], as documented
    stats = _run_task(uniform, 42, 3 * BLOCK_SAMPLES, (0, 3))
    children = np.random.SeedSequence(42).spawn(3)
    for (n, mean, _), child in zip(stats, children):
        expected = np.random.Generator(np.random.PCG64(child)).random(BLOCK_SAMPLES).mean()
        assert n == BLOCK_SAMPLES
        assert mean == expected


# --- reproducibility ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_same_seed_is_bit_identical_for_any_workers_and_chunking():
    base = allcores.simulate(uniform, N, seed=7, workers=1)
    runs = [
        allcores.simulate(uniform, N, seed=7, workers=2),
        allcores.simulate(uniform, N, seed=7, workers=2, chunk_size=1),
        allcores.simulate(uniform, N, seed=7, workers=2, chunk_size=3 * BLOCK_SAMPLES),
        allcores.simulate(uniform, N, seed=7, workers=1, chunk_size=N),
    ]
    for r in runs:
        assert (r.estimate, r.stderr, r.samples) == (base.estimate, base.stderr, base.samples)
    assert base.samples == N
    assert allcores.simulate(uniform, N, seed=8, workers=1).estimate != base.estimate


@pytest.mark.timeout(60)
def test_pi_with_one_and_two_workers():
    one = allcores.simulate("pi", 4 * BLOCK_SAMPLES, seed=5, workers=1)
    two = allcores.simulate("pi", 4 * BLOCK_SAMPLES, seed=5, workers=2)
    assert one.estimate == two.estimate
    assert two.workers == 2
    assert abs(two.estimate - math.pi) < 5 * two.stderr


def test_no_seed_reports_the_seed_that_reproduces_it():
    first = allcores.simulate(uniform, 10_000, workers=1)
    again = allcores.simulate(uniform, 10_000, seed=first.seed, workers=1)
    assert again.estimate == first.estimate


def test_stable_variance_for_data_far_from_zero():
    r = allcores.simulate(offset_normal, 2 * BLOCK_SAMPLES, seed=1, workers=1)
    assert r.std == pytest.approx(1.0, rel=0.01)


# --- early stop ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_target_stderr_stops_early_at_the_same_point_for_any_workers():
    target = 0.289 / math.sqrt(3 * BLOCK_SAMPLES)  # reached after about 3 blocks
    one = allcores.simulate(uniform, 10**9, seed=3, workers=1, target_stderr=target)
    two = allcores.simulate(uniform, 10**9, seed=3, workers=2, target_stderr=target)
    assert one.stopped_early and two.stopped_early
    assert one.stderr <= target
    assert one.samples % BLOCK_SAMPLES == 0 and one.samples < 10 * BLOCK_SAMPLES
    assert (one.samples, one.estimate) == (two.samples, two.estimate)


def test_rtol_stops_when_the_interval_is_narrow_enough():
    r = allcores.simulate(uniform, 10**8, seed=3, workers=1, rtol=2e-3, confidence=0.99)
    half = (r.interval[1] - r.interval[0]) / 2
    assert r.stopped_early
    assert half <= 2e-3 * abs(r.estimate)
    assert r.samples < 10**8


def test_unreachable_target_draws_every_sample():
    r = allcores.simulate(uniform, 1000, seed=3, workers=1, target_stderr=1e-9)
    assert not r.stopped_early and r.samples == 1000


# --- results and models ---------------------------------------------------------------------


def test_result_is_frozen_and_json_ready():
    r = allcores.simulate(uniform, 10_000, seed=1, workers=1, confidence=0.9)
    assert isinstance(r, SimulationResult)
    with pytest.raises(AttributeError):
        r.estimate = 0.0
    d = json.loads(json.dumps(r.to_dict()))
    assert d["samples"] == 10_000 and d["confidence"] == 0.9
    lo, hi = d["interval"]
    assert lo < r.estimate < hi
    assert hi - lo == pytest.approx(2 * 1.6448536 * r.stderr, rel=1e-6)
    one = allcores.simulate(uniform, 1, seed=1, workers=1).to_dict()
    assert one["stderr"] is None and one["interval"] == [None, None]


def test_european_call_and_put_within_three_stderr_of_black_scholes():
    for kind in ("call", "put"):
        option = EuropeanOption(spot=100, strike=105, rate=0.05, vol=0.2, maturity=1, kind=kind)
        r = allcores.simulate(option, 2 * BLOCK_SAMPLES, seed=2024, workers=1)
        assert abs(r.estimate - option.black_scholes()) < 3 * r.stderr, kind


def test_black_scholes_known_value_and_put_call_parity():
    call = black_scholes(100, 105, 0.05, 0.2, 1.0, "call")
    put = black_scholes(100, 105, 0.05, 0.2, 1.0, "put")
    assert call == pytest.approx(8.021352, abs=1e-6)
    assert call - put == pytest.approx(100 - 105 * math.exp(-0.05), rel=1e-12)


def test_asian_call_is_cheaper_than_european_and_reproducible():
    params = dict(spot=100, strike=100, rate=0.05, vol=0.3, maturity=1)
    asian = AsianOption(**params, steps=12)
    a = allcores.simulate(asian, 50_000, seed=9, workers=1)
    b = allcores.simulate(asian, 50_000, seed=9, workers=1)
    assert a.estimate == b.estimate
    assert a.estimate + 5 * a.stderr < black_scholes(**params)
    assert a.estimate > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(model="nope"), ValueError, "built-in models: pi"),
        (dict(model=42), TypeError, "callable"),
        (dict(samples=0), ValueError, "at least 1"),
        (dict(samples=1.5), ValueError, "whole number"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(workers=0), ValueError, "workers"),
        (dict(confidence=1.0), ValueError, "confidence"),
        (dict(target_stderr=-1.0), ValueError, "target_stderr"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, error, words):
    args = dict(model=uniform, samples=100, seed=1, workers=1) | kwargs
    model, samples = args.pop("model"), args.pop("samples")
    with pytest.raises(error, match=words):
        allcores.simulate(model, samples, **args)


def wrong_shape(rng, n):
    return rng.random(n + 1)


def not_finite(rng, n):
    x = rng.random(n)
    x[3] = np.nan
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_broken_models_are_named(workers):
    with pytest.raises(ValueError, match=r"wrong_shape returned an array of shape"):
        allcores.simulate(wrong_shape, 2 * BLOCK_SAMPLES, seed=1, workers=workers)
    with pytest.raises(ValueError, match=r"not_finite returned a non-finite value \(nan\) at 3"):
        allcores.simulate(not_finite, 2 * BLOCK_SAMPLES, seed=1, workers=workers)


@pytest.mark.timeout(60)
def test_lambda_models_run_in_workers():
    r = allcores.simulate(
        lambda rng, n: rng.integers(1, 7, n) == 6, 2 * BLOCK_SAMPLES, seed=1, workers=2
    )
    assert abs(r.estimate - 1 / 6) < 5 * r.stderr


def test_progress_bar_shows_the_running_estimate(capsys):
    allcores.simulate(uniform, 2 * BLOCK_SAMPLES, seed=1, workers=1, progress=True)
    err = capsys.readouterr().err
    assert "estimate=0.5" in err and "±" in err


def test_package_is_callable_however_it_was_imported():
    code = (
        "from allcores.simulate import pi\n"  # binds the package as allcores.simulate
        "import allcores\n"
        "print(allcores.simulate('pi', 1000, seed=1, workers=1).samples)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1000"


# --- CLI -------------------------------------------------------------------------------------


def cli(*args, timeout=90):
    return subprocess.run(
        [sys.executable, "-m", "allcores", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(120)
def test_cli_pi_json_is_the_same_on_one_and_two_workers():
    runs = [cli("pi", "--samples", "1e6", "--seed", "5", "--workers", w, "--json") for w in "12"]
    for run in runs:
        assert run.returncode == 0, run.stderr
    one, two = (json.loads(run.stdout) for run in runs)
    assert one["estimate"] == two["estimate"]
    assert {"estimate", "stderr", "interval", "samples", "seconds"} <= set(one)
    assert one["samples"] == 10**6 and two["workers"] == 2


@pytest.mark.timeout(60)
def test_cli_option_prices_european_and_asian():
    args = [
        "option",
        "--spot",
        "100",
        "--strike",
        "105",
        "--rate",
        "0.05",
        "--vol",
        "0.2",
        "--maturity",
        "1",
        "--samples",
        "3e5",
        "--seed",
        "1",
        "--workers",
        "1",
    ]
    eur = cli(*args, "--json")
    assert eur.returncode == 0, eur.stderr
    d = json.loads(eur.stdout)
    assert d["exact"] == pytest.approx(8.021352, abs=1e-6)
    assert abs(d["error_in_stderrs"]) < 3
    text = cli(*args, "--kind", "put", "--style", "asian", "--steps", "4")
    assert text.returncode == 0, text.stderr
    assert "asian put price" in text.stdout and "300,000 samples" in text.stdout


def test_cli_rejects_bad_values():
    bad = cli("pi", "--samples", "1.5")
    assert bad.returncode == 2 and "whole number" in bad.stderr
    bad = cli(
        "option",
        "--spot",
        "-1",
        "--strike",
        "1",
        "--rate",
        "0",
        "--vol",
        "0.2",
        "--maturity",
        "1",
        "--workers",
        "1",
    )
    assert bad.returncode == 2 and "spot must be a positive number" in bad.stderr
