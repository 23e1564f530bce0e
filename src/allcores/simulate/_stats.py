"""Streaming moments (count, mean, sum of squared deviations) merged exactly across chunks.

Each block of samples is summarised by its count ``n``, mean and ``m2 = sum((x - mean)**2)``;
two summaries merge with the pairwise update of Chan, Golub and LeVeque (1979), which is
numerically stable where the naive ``sum(x**2) - n*mean**2`` loses every digit for data far
from zero. Merging in a fixed order (block 0, 1, 2, ...) makes the result bit-identical no
matter which worker computed which block, or how blocks were grouped into tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["Moments"]


@dataclass(frozen=True)
class Moments:
    """The first two moments of a stream of samples, mergeable without the samples.

    Example::

        >>> a = Moments.of([1.0, 2.0]); b = Moments.of([3.0])
        >>> a.merge(b).mean
        2.0
    """

    n: int = 0
    """How many samples."""
    mean: float = 0.0
    """Their arithmetic mean (0.0 when there are none)."""
    m2: float = 0.0
    """Sum of squared deviations from the mean."""

    @classmethod
    def of(cls, values) -> Moments:  # type: ignore[no-untyped-def]
        """Moments of a sequence or 1-d numpy array of numbers (two passes: mean, then m2)."""
        try:
            import numpy as np
        except ImportError:  # pure-Python fallback; numpy is only an optional dependency
            xs = [float(v) for v in values]
            if not xs:
                return cls()
            mean = math.fsum(xs) / len(xs)
            return cls(len(xs), mean, math.fsum((x - mean) ** 2 for x in xs))
        x = np.asarray(values, dtype=np.float64)
        n = int(x.size)
        if n == 0:
            return cls()
        mean = float(x.mean())
        d = x - mean
        return cls(n, mean, float(np.dot(d, d)))

    def merge(self, other: Moments) -> Moments:
        """The moments of both streams together (Chan et al. parallel update)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / n)
        return Moments(n, mean, m2)

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0.0 with fewer than two samples."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def std(self) -> float:
        """Sample standard deviation."""
        return math.sqrt(max(self.variance, 0.0))

    @property
    def stderr(self) -> float:
        """Standard error of the mean; ``inf`` with fewer than two samples."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.inf

    def half_width(self, confidence: float) -> float:
        """Half the width of the normal-approximation confidence interval for the mean."""
        return z_score(confidence) * self.stderr


def z_score(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (1.959... for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)
