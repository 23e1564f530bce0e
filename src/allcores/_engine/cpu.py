"""How many CPUs this process may really use: affinity and cgroup quotas included."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = ["cpu_count"]


def _cgroup_v2_limit(root: Path) -> float | None:
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _cgroup_v1_limit(root: Path) -> float | None:
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _python_override() -> int | None:
    """Python 3.13's ``-X cpu_count=N`` / ``PYTHON_CPU_COUNT=N``, where one is set: the user's
    word for how many CPUs to use, which the standard pools follow from 3.13 on."""
    process_cpu_count = getattr(os, "process_cpu_count", None)
    if process_cpu_count is None:
        return None  # before 3.13 neither setting exists, for the standard pools either
    setting = sys._xoptions.get("cpu_count")
    if setting is None and not sys.flags.ignore_environment:
        setting = os.environ.get("PYTHON_CPU_COUNT")
    if setting is None or setting is True or setting == "default":
        return None
    count = process_cpu_count()
    return None if count is None else max(1, int(count))


def cpu_count(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """The number of CPUs this process can use; the default number of workers.

    Unlike ``os.cpu_count()`` it honours the CPU affinity mask (``taskset``, Slurm, Kubernetes
    cpusets) and a cgroup CPU quota (``docker --cpus=2``), rounding a fractional quota up.
    Always at least 1. On Python 3.13+, ``-X cpu_count=N`` or ``PYTHON_CPU_COUNT=N`` sets it,
    as it sets the standard pools' default (``os.process_cpu_count()``).

    >>> import allcores
    >>> allcores.cpu_count() >= 1
    True
    """
    override = _python_override()
    if override is not None:
        return override
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    root = Path(cgroup_root)
    quota = _cgroup_v2_limit(root)
    if quota is None:
        quota = _cgroup_v1_limit(root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
