"""How many CPUs this process may really use: affinity and cgroup quotas included."""

from __future__ import annotations

import math
import os
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


def cpu_count(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """The number of CPUs this process can use; the default number of workers.

    Unlike ``os.cpu_count()`` it honours the CPU affinity mask (``taskset``, Slurm, Kubernetes
    cpusets) and a cgroup CPU quota (``docker --cpus=2``), rounding a fractional quota up.
    Always at least 1.

    >>> import allcores
    >>> allcores.cpu_count() >= 1
    True
    """
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
