"""``allcores simulate``: Monte Carlo estimates on every core, reproducible from a seed.

allcores simulate pi --samples 1e9 --seed 5
allcores simulate option --spot 100 --strike 105 --rate 0.05 --vol 0.2 --maturity 1
allcores simulate option ... --style asian --steps 252 --kind put --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from allcores.cli import add_backend_args, count_arg


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--samples",
        type=count_arg,
        default=None,
        help="samples to draw (1e9 is fine; the maximum with --target-stderr/--rtol)",
    )
    common.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed; the same seed gives the same result on any worker count",
    )
    common.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    add_backend_args(common)
    common.add_argument(
        "--target-stderr",
        type=float,
        default=None,
        metavar="E",
        help="stop once the standard error is at most E",
    )
    common.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="stop once the interval half-width is at most RTOL x |estimate|",
    )
    common.add_argument(
        "--confidence", type=float, default=0.95, help="interval level (default 0.95)"
    )
    common.add_argument(
        "--progress", action="store_true", help="show a progress bar with the running estimate"
    )
    common.add_argument("--json", action="store_true",
                        help="print the result as one JSON object (its run statistics under "
                        "\"stats\")")
    common.add_argument("--report", metavar="FILE.html", default=None,
                        help="write an HTML report of where the run's time went")

    parser = subparsers.add_parser(
        "simulate",
        help="Monte Carlo simulations (pi, option prices) on every core",
        description="Run a Monte Carlo simulation on every core. Results are reproducible: "
        "the same --seed gives the same estimate for any --workers.",
    )
    models = parser.add_subparsers(dest="model", metavar="MODEL", required=True)
    pi = models.add_parser(
        "pi", parents=[common], help="estimate pi from random points (default 1e8 samples)"
    )
    pi.set_defaults(handler=_run, default_samples=10**8)
    opt = models.add_parser(
        "option",
        parents=[common],
        help="price a European or Asian option under geometric Brownian motion (default 1e6 paths)",
    )
    opt.add_argument("--spot", type=float, required=True, help="price of the underlying today")
    opt.add_argument("--strike", type=float, required=True, help="strike price")
    opt.add_argument(
        "--rate", type=float, required=True, help="risk-free rate, continuous (0.05 = 5%%)"
    )
    opt.add_argument("--vol", type=float, required=True, help="volatility per year (0.2 = 20%%)")
    opt.add_argument("--maturity", type=float, required=True, help="time to maturity in years")
    opt.add_argument("--kind", choices=("call", "put"), default="call")
    opt.add_argument(
        "--style",
        choices=("european", "asian"),
        default="european",
        help="asian: payoff on the average price over --steps dates (no closed form)",
    )
    opt.add_argument("--steps", type=int, default=252, help="averaging dates of an Asian option")
    opt.set_defaults(handler=_run, default_samples=10**6)


def _run(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        from allcores.cli import missing_extra

        raise missing_extra("numpy", "simulate") from None
    from allcores.simulate import AsianOption, EuropeanOption, simulate

    extra: dict[str, Any] = {"model": args.model}
    try:
        if args.model == "pi":
            model: Any = "pi"
            exact = math.pi
        else:
            params = dict(
                spot=args.spot,
                strike=args.strike,
                rate=args.rate,
                vol=args.vol,
                maturity=args.maturity,
                kind=args.kind,
            )
            extra.update(params, style=args.style)
            if args.style == "asian":
                model, exact = AsianOption(**params, steps=args.steps), None
                extra["steps"] = args.steps
            else:
                model = EuropeanOption(**params)
                exact = model.black_scholes()
        result = simulate(
            model,
            args.samples or args.default_samples,
            seed=args.seed,
            workers=args.workers,
            target_stderr=args.target_stderr,
            rtol=args.rtol,
            confidence=args.confidence,
            progress=args.progress,
            report=args.report,
        )
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"allcores simulate: {exc}", file=sys.stderr)
        return 2
    out = {**extra, **result.to_dict()}
    if exact is not None:
        out["exact"] = exact
        out["error_in_stderrs"] = (
            (result.estimate - exact) / result.stderr if result.stderr else None
        )
    if args.json:
        print(json.dumps(out))
        return 0
    name = "pi" if args.model == "pi" else f"{args.style} {args.kind} price"
    lo, hi = result.interval
    print(
        f"{name} = {result.estimate:.6f} ± {result.stderr:.2g} "
        f"({result.confidence:.0%} interval {lo:.6f} .. {hi:.6f})"
    )
    if exact is not None:
        label = "pi" if args.model == "pi" else "Black-Scholes"
        print(f"{label} = {exact:.6f}; off by {out['error_in_stderrs']:+.2f} standard errors")
    early = " (precision target reached)" if result.stopped_early else ""
    print(
        f"{result.samples:,} samples{early}, {result.seconds:.2f} s on {result.workers} "
        f"worker{'s' * (result.workers != 1)}, seed {result.seed}"
    )
    if args.report:
        print(f"report: {args.report}")
    return 0
