"""A module that runs a map while it is being imported, returning instances of its own class
(tests/test_robustness.py imports it; it must not deadlock on the import lock)."""

from __future__ import annotations

import allcores
import allcores.worker


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def make_point(x: int) -> Point:
    return Point(x)


if allcores.worker._current is None:  # in the parent only: a worker imports it for make_point
    POINTS = allcores.map(make_point, range(4), workers=1)
