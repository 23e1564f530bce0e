"""Monte Carlo simulations on every core, reproducible from one seed.

::

    import allcores
    from allcores.simulate.models import EuropeanOption

    r = allcores.simulate("pi", 1e8, seed=5)                 # built-in model by name
    print(r.estimate, "+/-", r.stderr, r.interval)
    call = EuropeanOption(spot=100, strike=105, rate=0.05, vol=0.2, maturity=1)
    r = allcores.simulate(call, 1e7, seed=1, rtol=1e-3)      # stop at 0.1% precision
    r = allcores.simulate(lambda rng, n: rng.random(n) ** 2, 1e7, seed=1)   # your own model

The package and its main function share the name ``simulate``: ``allcores.simulate(...)``
calls the function, and ``from allcores.simulate import SimulationResult`` reaches the rest.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from allcores.simulate._core import BLOCK_SAMPLES, SimulationResult, simulate
from allcores.simulate._stats import Moments
from allcores.simulate.models import AsianOption, EuropeanOption, black_scholes, pi

__all__ = [
    "BLOCK_SAMPLES",
    "AsianOption",
    "EuropeanOption",
    "Moments",
    "SimulationResult",
    "black_scholes",
    "pi",
    "simulate",
]


class _CallableModule(types.ModuleType):
    """Lets ``allcores.simulate(...)`` work even when the name is bound to this package.

    ``allcores.simulate`` is normally the function (``allcores.__getattr__`` binds it), but a
    plain ``import allcores.simulate`` or ``from allcores.simulate import X`` makes the import
    system bind the package there instead; calling the package then calls the function.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return simulate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
