"""Progress bars for ``progress=True``: tqdm when it is installed, a plain stderr line if not.

Imported only when a call asks for progress, so ``import allcores`` never imports tqdm.
"""

from __future__ import annotations

import sys
import time
from typing import Any

# Redraw the fallback bar at most this often: a terminal cannot show more, and each redraw costs.
_REDRAW_SECONDS = 0.2


class _LineBar:
    """A dependency-free bar: count, percent, rate and ETA on one stderr line."""

    def __init__(self, total: int | None, desc: str, unit: str = "it") -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.postfix = ""
        self.n = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, n: int) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._drawn >= _REDRAW_SECONDS:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float, end: str = "\r") -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        text = f"{self.desc}: {self.n}"
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            text += f"/{self.total} ({100 * self.n / self.total:.0f}%) ETA {eta:.1f}s"
        text += f" {rate:.1f} {self.unit}/s"
        if self.postfix:
            text += f", {self.postfix}"
        print(text, end=end, file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        """A short status after the rate (tqdm's method of the same name)."""
        self.postfix = text

    def close(self) -> None:
        self._draw(time.monotonic(), end="\n")


def make_progress(
    progress: Any, total: int | None, desc: str = "allcores", unit: str = "it"
) -> Any:
    """A bar for ``progress=`` (True, or any object with ``update(n)`` and ``close()``).

    The one progress bar of the library: the facades' ``progress=`` and the batch tools (through
    ``allcores/_batch.py``) both draw it. ``unit="sample"`` scales large counts (1.2M).
    """
    if not progress:
        return None
    if hasattr(progress, "update") and hasattr(progress, "close"):
        return progress
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineBar(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                mininterval=_REDRAW_SECONDS, unit_scale=unit == "sample")
