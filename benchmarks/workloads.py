"""The issue-2 workloads of ../shared/benchmarks.md, exactly as defined there.

| id  | definition                                                                         |
|-----|------------------------------------------------------------------------------------|
| W1  | ``inc(x) = x + 1`` over ``range(200_000)``; the result must equal the serial one   |
| W2  | 64 tasks, each ``spin(n)``: a pure-Python loop of about 50 ms                     |
| W3  | 200 ``spin`` tasks, seeded durations: 90% 1-5 ms, 6% 10-50 ms, 4% exactly 200 ms,  |
|     | shuffled (about 2.3-2.5 s of serial work)                                          |
| W3b | W3's tasks sorted by duration, the 200 ms ones last (the tail problem)             |
| W7  | create a pool, run one trivial task, shut the pool down (lives in ``run.py``)      |

``spin`` is calibrated once per run (:func:`calibrate`) so that one W2 task takes about 50 ms on
the machine at hand; W3's millisecond durations use the same calibration.

    >>> per_ms = calibrate()
    >>> wl = build_workloads(per_ms)
    >>> wl["W2"].items[:2]  # loop lengths, about 50 ms each
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

W1_ITEMS = 200_000
W2_TASKS = 64
W2_TASK_MS = 50.0
W3_TASKS = 200
#: (share of tasks, duration in ms: a (low, high) range drawn uniformly, or one exact value)
W3_MIX: tuple[tuple[float, tuple[float, float]], ...] = (
    (0.90, (1.0, 5.0)),
    (0.06, (10.0, 50.0)),
    (0.04, (200.0, 200.0)),
)
#: Fixed so every run (and every machine) gets the same task list.
W3_SEED = 20_240_601
#: Loop length used to calibrate; long enough (~10-30 ms) for the timer, short enough to repeat.
CALIBRATION_N = 300_000
CALIBRATION_TRIES = 7


def inc(x: int) -> int:
    """W1's task: the tiniest useful function."""
    return x + 1


def spin(n: int) -> int:
    """W2/W3's task: a pure-Python loop that holds the GIL for ``n`` iterations."""
    s = 0
    for i in range(n):
        s = (s + i * i) % 1000003
    return s


def calibrate(tries: int = CALIBRATION_TRIES) -> float:
    """Loop iterations of :func:`spin` per millisecond on this machine.

    The fastest of several tries is kept: on a shared machine the slow tries measure the
    neighbours, not the loop.
    """
    best = float("inf")
    spin(CALIBRATION_N // 10)  # warm the interpreter's caches
    for _ in range(tries):
        t0 = time.perf_counter()
        spin(CALIBRATION_N)
        best = min(best, time.perf_counter() - t0)
    return CALIBRATION_N / (best * 1e3)


def skewed_durations_ms(seed: int = W3_SEED) -> list[float]:
    """W3's generator: 200 task durations in milliseconds from ``W3_MIX``, shuffled by ``seed``.

    W3 is this with the default seed; W3s (``w3s_skew.py``) runs it with other seeds, so a
    scheduling claim is checked on other positions of the heavy tasks than the ones it was
    tuned on.
    """
    rng = random.Random(seed)
    durations: list[float] = []
    for share, (low, high) in W3_MIX:
        count = round(share * W3_TASKS)
        durations += [low if low == high else rng.uniform(low, high) for _ in range(count)]
    assert len(durations) == W3_TASKS, len(durations)
    rng.shuffle(durations)
    return durations


#: W3's durations are the generator's with the default seed (the name earlier scripts use).
w3_durations_ms = skewed_durations_ms


@dataclass(frozen=True)
class Workload:
    """One mapping workload: ``fn`` over ``items``; ``expected`` is the serial result if known."""

    id: str
    description: str
    fn: Callable[[Any], Any]
    items: list[Any]
    expected: list[Any] | None = None
    serial_work_s: float | None = None


def build_workloads(per_ms: float) -> dict[str, Workload]:
    """W1, W2, W3 and W3b, with ``spin`` lengths from :func:`calibrate`'s ``per_ms``."""
    w1 = list(range(W1_ITEMS))
    w2 = [round(W2_TASK_MS * per_ms)] * W2_TASKS
    durations = w3_durations_ms()
    w3 = [round(ms * per_ms) for ms in durations]
    w3b = sorted(w3)
    return {
        "W1": Workload(
            "W1",
            f"inc(x)=x+1 over range({W1_ITEMS:_})",
            inc,
            w1,
            expected=[x + 1 for x in w1],
        ),
        "W2": Workload(
            "W2",
            f"{W2_TASKS} x spin(~{W2_TASK_MS:.0f} ms)",
            spin,
            w2,
            serial_work_s=W2_TASKS * W2_TASK_MS / 1e3,
        ),
        "W3": Workload(
            "W3",
            f"{W3_TASKS} skewed spin tasks, shuffled",
            spin,
            w3,
            serial_work_s=sum(durations) / 1e3,
        ),
        "W3b": Workload(
            "W3b",
            f"{W3_TASKS} skewed spin tasks, heavy last",
            spin,
            w3b,
            serial_work_s=sum(durations) / 1e3,
        ),
    }
