"""How ``simulate()`` splits, runs and merges a Monte Carlo simulation.

::

    samples ──> blocks of BLOCK_SAMPLES (block k draws from SeedSequence(seed).spawn(...)[k])
                  │
                  ├─ tasks: runs of consecutive blocks, sized for the worker count
                  │     worker: model(rng_k, n_k) -> samples -> Moments(n, mean, m2) per block
                  │
    parent <──────┘ merges block moments in block order (Chan et al.), checks the target

Randomness is keyed by block number and merging happens in block order in the parent, so the
result for a seed is bit-identical for any worker count and any ``chunk_size``: those only
decide which process computes which block, never which numbers are drawn or how they are summed.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from allcores.simulate._stats import Moments, z_score

__all__ = ["BLOCK_SAMPLES", "SimulationResult", "simulate"]

#: Samples per random stream. This is the unit of randomness: block k always draws from the
#: k-th child of the seed, whatever the worker count or chunk size. 2**18 samples keep a
#: block's arrays in a few MiB while the per-block cost of seeding a generator (~30 us) stays
#: under 1% of the drawing work. Changing it changes the numbers a seed gives.
BLOCK_SAMPLES = 1 << 18

#: Tasks per worker when there is no precision target: enough to balance uneven workers,
#: few enough that per-task overhead is invisible.
TASKS_PER_WORKER = 8

#: At most this many blocks (2**30 samples) per task, so a task's per-block summary stays a
#: few hundred KiB and a huge run still reports progress.
MAX_TASK_BLOCKS = 4096

#: With a precision target the parent checks after every block, and the work in flight past
#: the stopping point is wasted; so tasks are small (at most this many blocks) and only this
#: many tasks per worker are submitted between checks.
TARGET_TASK_BLOCKS = 4
TARGET_WAVE_TASKS_PER_WORKER = 2


@dataclass(frozen=True)
class SimulationResult:
    """The outcome of :func:`simulate`; all numbers, no formatting.

    Example::

        >>> r = simulate("pi", 1_000_000, seed=5)
        >>> r.interval[0] < r.estimate < r.interval[1]
        True
    """

    estimate: float
    """Mean of all samples drawn: the Monte Carlo estimate."""
    stderr: float
    """Standard error of the estimate (sample std / sqrt(samples))."""
    interval: tuple[float, float]
    """Normal-approximation confidence interval for the true value, at ``confidence``."""
    samples: int
    """Samples actually drawn (fewer than asked when a precision target stopped it early)."""
    seconds: float
    """Wall-clock time of the whole run."""
    confidence: float
    """Confidence level of ``interval``, e.g. 0.95."""
    std: float
    """Sample standard deviation of one sample."""
    seed: int
    """The seed used; pass it again to reproduce the result exactly (also when you gave none)."""
    stopped_early: bool
    """True when the precision target was reached before all ``samples`` were drawn."""
    workers: int
    """Worker processes used (1 means it ran in this process)."""
    stats: Any = field(default=None, compare=False, repr=False)
    """Where the run's time went: an :class:`allcores.RunStats` over all its tasks."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; an infinite error (fewer than 2 samples) becomes ``None``."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stats"}
        d["interval"] = [_finite_or_none(x) for x in self.interval]
        d["stderr"] = _finite_or_none(self.stderr)
        if self.stats is not None:
            d["stats"] = self.stats.to_dict()
        return d


def simulate(
    model: Callable[[Any, int], Any] | str,
    samples: int | float,
    *,
    seed: int | None = None,
    workers: int | None = None,
    chunk_size: int | None = None,
    target_stderr: float | None = None,
    rtol: float | None = None,
    confidence: float = 0.95,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
) -> SimulationResult:
    """Run a Monte Carlo simulation on every core; the estimate is the mean of all samples.

    Args:
        model: ``model(rng, n) -> array`` of ``n`` samples drawn from the numpy Generator
            ``rng``, or the name of a built-in model (``"pi"``); see
            :mod:`allcores.simulate.models`.
        samples: how many samples to draw (``1e9`` is accepted); the maximum when a target
            is set.
        seed: an int; the same seed gives a bit-identical result for any ``workers`` and
            ``chunk_size``. ``None`` draws fresh entropy (reported in ``result.seed``).
        workers: worker processes (default: every core); 1 runs in this process.
        chunk_size: samples per task; rounded up to whole blocks of :data:`BLOCK_SAMPLES`.
            Only scheduling changes with it, never the result.
        target_stderr: stop once the standard error is at most this.
        rtol: stop once the interval's half-width is at most ``rtol * abs(estimate)``.
        confidence: level of the reported interval (and of ``rtol``).
        progress: show a progress bar with the running estimate and its error.
        report: a path: write an HTML report of where the run's time went (see
            :func:`allcores.report`); ``result.stats`` has the numbers either way.

    Example::

        >>> import allcores
        >>> r = allcores.simulate("pi", 2_000_000, seed=5, workers=2)
        >>> r.estimate == allcores.simulate("pi", 2_000_000, seed=5, workers=1).estimate
        True
        >>> r = allcores.simulate(lambda rng, n: rng.random(n), 10**7, seed=1, target_stderr=1e-3)
        >>> r.stopped_early and r.stderr <= 1e-3
        True
    """
    started = time.perf_counter()
    model = _resolve_model(model)
    total = _check_samples(samples)
    z = z_score(confidence)
    for name, value in (("target_stderr", target_stderr), ("rtol", rtol)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    has_target = target_stderr is not None or rtol is not None
    entropy = _resolve_seed(seed)
    from allcores._batch import BatchRun

    run = BatchRun(workers, tool="simulate", progress=progress, total=total, unit="sample",
                   report=report)
    n_workers = run.workers

    n_blocks = -(-total // BLOCK_SAMPLES)
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive number of samples, got {chunk_size!r}")
        per_task = max(1, -(-int(chunk_size) // BLOCK_SAMPLES))
    else:
        per_task = max(1, min(-(-n_blocks // (n_workers * TASKS_PER_WORKER)), MAX_TASK_BLOCKS))
        if has_target:
            per_task = min(per_task, TARGET_TASK_BLOCKS)
    # Task starts as a lazy range: with a target, 1e12 samples would otherwise mean a list of
    # a million tasks built before the first one runs.
    starts = range(0, n_blocks, per_task)
    wave = n_workers * TARGET_WAVE_TASKS_PER_WORKER if has_target else len(starts)
    run_task = functools.partial(_run_task, model, entropy, total)

    def reached(m: Moments) -> bool:
        if m.n < 2:
            return False
        if target_stderr is not None and m.stderr <= target_stderr:
            return True
        return rtol is not None and z * m.stderr <= rtol * abs(m.mean)

    moments = Moments()
    stopped = False
    with run:
        for start in range(0, len(starts), wave):
            tasks = [
                (first, min(per_task, n_blocks - first)) for first in starts[start : start + wave]
            ]
            # chunksize=1: a task is already sized to a worker's share (TASKS_PER_WORKER)
            for block_stats in run.imap(run_task, tasks, ordered=True, chunksize=1):
                if stopped:
                    continue  # drain the wave: its tasks are already running
                drawn = 0
                for n, mean, m2 in block_stats:
                    moments = moments.merge(Moments(n, mean, m2))
                    drawn += n
                    if has_target and reached(moments):
                        stopped = True
                        break
                run.advance(drawn, f"estimate={moments.mean:.7g} ± {moments.stderr:.2g}")
            if stopped:
                break

    half = z * moments.stderr
    return SimulationResult(
        estimate=moments.mean,
        stderr=moments.stderr,
        interval=(moments.mean - half, moments.mean + half),
        samples=moments.n,
        seconds=time.perf_counter() - started,
        confidence=confidence,
        std=moments.std,
        seed=entropy,
        stopped_early=stopped and moments.n < total,
        workers=n_workers,
        stats=run.stats,
    )


def _run_task(
    model: Callable[[Any, int], Any], entropy: int, total: int, task: tuple[int, int]
) -> list[tuple[int, float, float]]:
    """Worker side: draw and summarise blocks ``first .. first+count-1``."""
    import numpy as np

    first, count = task
    out = []
    summarise = getattr(model, "moments", None)
    for k in range(first, first + count):
        n = min(BLOCK_SAMPLES, total - k * BLOCK_SAMPLES)
        # SeedSequence(entropy, spawn_key=(k,)) is exactly SeedSequence(entropy).spawn(k+1)[k],
        # without building the k children before it.
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(k,))))
        if summarise is not None:
            m = summarise(rng, n)
        else:
            m = Moments.of(_check_output(model, model(rng, n), n))
        out.append((m.n, m.mean, m.m2))
    return out


def _check_output(model: Any, values: Any, n: int) -> Any:
    import numpy as np

    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(
            f"model {_name(model)} returned an array of shape {arr.shape} for n={n}; "
            f"a model must return one number per sample, shape ({n},)"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"model {_name(model)} returned {arr.dtype} values; it must return numbers")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"model {_name(model)} returned a non-finite value ({arr[bad]}) at {bad}")
    return arr


def _resolve_model(model: Any) -> Callable[[Any, int], Any]:
    from allcores.simulate.models import BY_NAME

    if isinstance(model, str):
        try:
            return BY_NAME[model]
        except KeyError:
            known = ", ".join(sorted(BY_NAME))
            raise ValueError(f"unknown model {model!r}; built-in models: {known}") from None
    if not callable(model):
        raise TypeError(f"model must be a callable model(rng, n) or a model name, got {model!r}")
    return model


def _check_samples(samples: int | float) -> int:
    if isinstance(samples, bool) or not isinstance(samples, (int, float)):
        raise TypeError(f"samples must be a number, got {samples!r}")
    if isinstance(samples, float) and not (math.isfinite(samples) and samples.is_integer()):
        raise ValueError(f"samples must be a whole number, got {samples!r}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples!r}")
    return int(samples)


def _resolve_seed(seed: int | None) -> int:
    if seed is None:
        import numpy as np

        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return seed


def _name(model: Any) -> str:
    return getattr(model, "__qualname__", None) or type(model).__name__


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
