"""Relief for the garbage collector while a pool holds many pending one-item calls.

``apply_async``/``submit`` in a loop allocates a few dozen small container objects per call
(the caller's result object, the pending call, the manager's chunk and answer), and thousands of
them are alive at once while they wait. With CPython's default young-generation threshold of 700
allocations, the collector then runs every few calls and walks those live objects again and
again: measured on 5,000 tiny ``apply_async`` calls (``benchmarks/apply_async.py``), about a
third of the wall time went to the collector, none of it finding garbage.

So while some pool has at least :data:`PENDING_CALLS` calls in hand, the young-generation
threshold is raised to :data:`THRESHOLD` allocations (the older generations' thresholds are left
alone), and put back when the last such pool has none left. Why this is safe for the caller's
program:

- it changes *when* the collector runs, never *what* it frees: reference counting still frees
  everything that is not in a cycle at once, and cycles are still collected, after at most
  :data:`THRESHOLD` allocations instead of 700 (a few MB of cyclic garbage at most, far less
  than the pending calls themselves hold);
- it applies only while calls are pending, and the old threshold comes back when they are done
  (or the pool stops);
- it leaves the collector as the program set it: nothing is raised when automatic collection is
  off (``gc.disable()``, or a threshold of 0) or already at least this high, and the old value is
  put back only if nobody changed the threshold meanwhile (a program that sets its own wins).

Process-wide (the collector is), counted across pools and threads under one lock.
"""

from __future__ import annotations

import gc
import threading

# A pool raises the threshold while it has at least this many calls in hand (a map is one call).
PENDING_CALLS = 64
# The young-generation threshold meanwhile (CPython's default is 700; 3.13's is 2000).
THRESHOLD = 10_000

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, ...] | None = None  # the thresholds before, when this module raised them


def hold() -> None:
    """One more pool has many pending calls: raise the threshold if it is the first."""
    global _holders, _saved
    with _lock:
        _holders += 1
        if _holders > 1:
            return
        current = gc.get_threshold()
        if gc.isenabled() and 0 < current[0] < THRESHOLD:
            _saved = current
            gc.set_threshold(THRESHOLD, *current[1:])


def release() -> None:
    """A pool that called :func:`hold` has no pending calls left (or stopped)."""
    global _holders, _saved
    with _lock:
        _holders -= 1
        if _holders > 0 or _saved is None:
            return
        saved, _saved = _saved, None
        if gc.get_threshold()[0] == THRESHOLD:  # else the program set its own: keep it
            gc.set_threshold(*saved)
