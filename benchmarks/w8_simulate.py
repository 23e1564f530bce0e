"""Issue 6's simulation benchmark: W8 Monte Carlo pi, and the European option check.

    python benchmarks/w8_simulate.py                       # 2e8 samples, 3 rounds (~1.5 min)
    python benchmarks/w8_simulate.py --samples 2e6 --rounds 1      # smoke test
    python benchmarks/w8_simulate.py --json w8.json

Systems (2 workers; one warm-up, then --rounds timed rounds, medians, ratios from this run):
  serial    W8 as written in shared/benchmarks.md: 64 numpy chunks, chunk i seeded with
            SeedSequence(seed).spawn(64)[i], counting points inside the circle
  mp        multiprocessing.Pool(2, fork).map of the same 64 chunk functions
  allcores  allcores.simulate("pi", samples, seed=5, workers=2): mean, standard error and
            interval from streaming moments, not just the count
  allcores-1  the same with workers=1 (in this process): allcores/allcores-1 is the parallel
            speedup alone; serial/allcores-1 is what the blocked numpy kernel gains by itself
            (2**18-point blocks stay in cache; squares are taken in place)

Bars (issue 6): allcores >= 1.9x serial on W8; the same seed gives the same estimate with 1 and
2 workers; the European call price lies within 3 standard errors of Black-Scholes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import _harness  # noqa: E402
from _harness import measure  # noqa: E402

WORKERS = 2
CHUNKS = 64
SEED = 5
OPTION = dict(spot=100.0, strike=105.0, rate=0.05, vol=0.2, maturity=1.0)
#: Paths for the option check: a standard error of about 0.004 on a price of 8.02.
OPTION_SAMPLES = 10_000_000


def pi_chunk(args: tuple[int, int]) -> int:
    """W8's unit of work: points of chunk i inside the quarter circle."""
    i, n = args
    rng = np.random.default_rng(np.random.SeedSequence(SEED).spawn(CHUNKS)[i])
    xy = rng.random((2, n))
    return int(np.count_nonzero(xy[0] ** 2 + xy[1] ** 2 <= 1.0))


def chunk_args(samples: int) -> list[tuple[int, int]]:
    return [(i, samples // CHUNKS + (i < samples % CHUNKS)) for i in range(CHUNKS)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=float, default=2e8, help="W8 samples (default 2e8)")
    parser.add_argument("--option-samples", type=float, default=OPTION_SAMPLES)
    _harness.add_common_args(parser)
    args = parser.parse_args(argv)
    samples, option_samples = int(args.samples), int(args.option_samples)

    import allcores
    from allcores.simulate import EuropeanOption

    print(_harness.machine_line())
    print(f"W8: pi from {samples:,} points, {WORKERS} workers, {args.rounds} rounds + warm-up\n")
    items = chunk_args(samples)
    results = {}
    results["serial"] = measure(lambda: 4 * sum(map(pi_chunk, items)) / samples, rounds=args.rounds)
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        pool.map(abs, range(WORKERS))  # workers up before timing
        results["mp"] = measure(
            lambda: 4 * sum(pool.map(pi_chunk, items)) / samples, rounds=args.rounds
        )
    allcores.map(abs, range(WORKERS), workers=WORKERS)  # the shared pool up before timing
    results["allcores"] = measure(
        lambda: allcores.simulate("pi", samples, seed=SEED, workers=WORKERS), rounds=args.rounds
    )
    results["allcores-1"] = measure(
        lambda: allcores.simulate("pi", samples, seed=SEED, workers=1), rounds=args.rounds
    )
    print(_harness.render_table({"W8": results}, systems=results, baseline="serial"))
    parallel = _harness.ratio(results, "allcores-1", "allcores")
    if parallel is not None:
        print(f"\nallcores 2 workers vs 1 worker (parallel speedup alone): {parallel:.2f}x")

    two = allcores.simulate("pi", samples, seed=SEED, workers=WORKERS)
    one = allcores.simulate("pi", samples, seed=SEED, workers=1)
    print(
        f"\nallcores pi = {two.estimate:.7f} ± {two.stderr:.1e} (2 workers), "
        f"{one.estimate:.7f} (1 worker); |pi - estimate| = "
        f"{abs(two.estimate - math.pi) / two.stderr:.2f} stderr"
    )

    call = EuropeanOption(**OPTION)
    opt = allcores.simulate(call, option_samples, seed=SEED, workers=WORKERS)
    exact = call.black_scholes()
    off = (opt.estimate - exact) / opt.stderr
    print(
        f"European call: {opt.estimate:.5f} ± {opt.stderr:.1e} from {option_samples:,} paths "
        f"in {opt.seconds:.2f} s; Black-Scholes {exact:.5f}; off by {off:+.2f} stderr"
    )

    speedup = _harness.ratio(results, "serial", "allcores")
    bars = [
        (
            "W8 speedup over serial numpy >= 1.9",
            speedup is not None and speedup >= 1.9,
            f"{speedup:.2f}x" if speedup else "n/a",
        ),
        (
            "same seed, same estimate on 1 and 2 workers",
            one.estimate == two.estimate,
            f"{one.estimate!r} vs {two.estimate!r}",
        ),
        ("European call within 3 stderr of Black-Scholes", abs(off) < 3, f"{off:+.2f} stderr"),
    ]
    print()
    for name, ok, shown in bars:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {shown}")
    if args.json:
        _harness.write_json(
            args.json,
            {
                "machine": _harness.machine_info(),
                "samples": samples,
                "W8": results,
                "estimate_1_worker": one.estimate,
                "estimate_2_workers": two.estimate,
                "option": {**opt.to_dict(), "black_scholes": exact, "off_stderr": off},
                "bars": [{"bar": n, "pass": ok, "value": s} for n, ok, s in bars],
            },
        )
    return 0 if all(ok for _, ok, _ in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
