"""Built-in Monte Carlo models, and the shape a model of your own takes.

A model is any callable ``model(rng, n) -> array`` that draws ``n`` independent samples from
the numpy ``Generator`` it is given and returns them as a 1-d array of ``n`` numbers; the
simulation's estimate is their mean. It must draw all its randomness from ``rng`` (never from
``np.random`` globals), so the same seed gives the same numbers on any number of workers::

    def dice_six(rng, n):                     # probability of a six
        return rng.integers(1, 7, size=n) == 6

A model may also define ``moments(rng, n) -> Moments`` to summarise a block without
materialising a float array (the built-in ``pi`` does: it counts points, which is as fast as a
hand-written numpy loop). Models travel to worker processes, so define them at module level or
as frozen dataclasses, as below; lambdas work too (allcores pickles them with cloudpickle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from allcores.simulate._stats import Moments

__all__ = ["AsianOption", "EuropeanOption", "Pi", "black_scholes", "pi"]

OptionKind = Literal["call", "put"]

#: Trading days in a year: the default number of averaging dates of an Asian option.
TRADING_DAYS = 252


@dataclass(frozen=True)
class Pi:
    """Estimates pi: 4 times the fraction of uniform points of the unit square inside the circle.

    Example::

        >>> import allcores
        >>> r = allcores.simulate("pi", 1_000_000, seed=5)
        >>> abs(r.estimate - 3.14159) < 5 * r.stderr
        True
    """

    def __call__(self, rng: Any, n: int) -> Any:
        import numpy as np

        return np.where(self._inside(rng, n), 4.0, 0.0)

    def moments(self, rng: Any, n: int) -> Moments:
        # Each sample is 4 or 0, so count, mean and m2 follow from the number of hits k:
        # m2 = sum((x - mean)^2) = 16 * k * (1 - k/n). No float array is ever built.
        import numpy as np

        k = int(np.count_nonzero(self._inside(rng, n)))
        p = k / n
        return Moments(n, 4.0 * p, 16.0 * k * (1.0 - p))

    @staticmethod
    def _inside(rng: Any, n: int) -> Any:
        xy = rng.random((2, n))
        xy *= xy
        return xy[0] + xy[1] <= 1.0


pi = Pi()


@dataclass(frozen=True)
class EuropeanOption:
    """Price of a European call or put under geometric Brownian motion (Black-Scholes world).

    Each sample is the discounted payoff of one simulated terminal price
    ``S_T = S_0 exp((r - vol^2/2) T + vol sqrt(T) Z)``, so the mean converges to
    :func:`black_scholes`.

    Example::

        >>> import allcores
        >>> call = EuropeanOption(spot=100, strike=105, rate=0.05, vol=0.2, maturity=1)
        >>> r = allcores.simulate(call, 200_000, seed=1)
        >>> abs(r.estimate - black_scholes(100, 105, 0.05, 0.2, 1)) < 4 * r.stderr
        True
    """

    spot: float
    strike: float
    rate: float
    vol: float
    maturity: float
    kind: OptionKind = "call"

    def __post_init__(self) -> None:
        _check_option(self.spot, self.strike, self.vol, self.maturity, self.kind)

    def __call__(self, rng: Any, n: int) -> Any:
        import numpy as np

        t = self.maturity
        z = rng.standard_normal(n)
        s_t = self.spot * np.exp((self.rate - 0.5 * self.vol**2) * t + self.vol * math.sqrt(t) * z)
        return math.exp(-self.rate * t) * _payoff(s_t, self.strike, self.kind)

    def black_scholes(self) -> float:
        """The closed-form price this simulation converges to."""
        return black_scholes(self.spot, self.strike, self.rate, self.vol, self.maturity, self.kind)


@dataclass(frozen=True)
class AsianOption:
    """An arithmetic-average Asian call or put under GBM; it has no closed-form price.

    The payoff uses the mean of the price at ``steps`` equally spaced dates up to maturity.
    Paths are advanced one date at a time with a running sum, so memory is ``O(n)``, not
    ``O(n * steps)``.

    Example::

        >>> import allcores
        >>> asian = AsianOption(spot=100, strike=105, rate=0.05, vol=0.2, maturity=1, steps=12)
        >>> r = allcores.simulate(asian, 100_000, seed=1)
        >>> r.estimate < black_scholes(100, 105, 0.05, 0.2, 1)  # averaging lowers the volatility
        True
    """

    spot: float
    strike: float
    rate: float
    vol: float
    maturity: float
    kind: OptionKind = "call"
    steps: int = TRADING_DAYS

    def __post_init__(self) -> None:
        _check_option(self.spot, self.strike, self.vol, self.maturity, self.kind)
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps!r}")

    def __call__(self, rng: Any, n: int) -> Any:
        import numpy as np

        dt = self.maturity / self.steps
        drift = (self.rate - 0.5 * self.vol**2) * dt
        shock = self.vol * math.sqrt(dt)
        log_s = np.full(n, math.log(self.spot))
        total = np.zeros(n)
        for _ in range(self.steps):
            log_s += drift + shock * rng.standard_normal(n)
            total += np.exp(log_s)
        return math.exp(-self.rate * self.maturity) * _payoff(
            total / self.steps, self.strike, self.kind
        )


def black_scholes(
    spot: float, strike: float, rate: float, vol: float, maturity: float, kind: OptionKind = "call"
) -> float:
    """The Black-Scholes price of a European call or put (no dividends).

    Example::

        >>> round(black_scholes(100, 105, 0.05, 0.2, 1.0), 4)
        8.0214
    """
    _check_option(spot, strike, vol, maturity, kind)
    sqrt_t = math.sqrt(maturity)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * maturity) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    discount = math.exp(-rate * maturity)
    if kind == "call":
        return spot * _norm_cdf(d1) - strike * discount * _norm_cdf(d2)
    return strike * discount * _norm_cdf(-d2) - spot * _norm_cdf(-d1)


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _payoff(price: Any, strike: float, kind: str) -> Any:
    import numpy as np

    return np.maximum(price - strike, 0.0) if kind == "call" else np.maximum(strike - price, 0.0)


def _check_option(spot: float, strike: float, vol: float, maturity: float, kind: str) -> None:
    if kind not in ("call", "put"):
        raise ValueError(f"kind must be 'call' or 'put', got {kind!r}")
    for name, value in (("spot", spot), ("strike", strike), ("vol", vol), ("maturity", maturity)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


#: Models known by name to ``simulate()`` and the ``allcores simulate`` command.
BY_NAME: dict[str, Any] = {"pi": pi}
