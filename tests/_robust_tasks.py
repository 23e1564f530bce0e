"""Tasks for tests/test_robustness.py: odd items that must not stop a pool (importable by
workers under every start method)."""

from __future__ import annotations

import os
import signal
import sys
import time


class OddNotes(Exception):
    """An exception whose ``__notes__`` is not a list: ``add_note`` raises TypeError on it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.__notes__ = "not a list"


def raise_odd_notes(x):
    if x == 2:
        raise OddNotes(f"odd {x}")
    return x


def _exit_on_load():
    raise SystemExit(3)


class ExitOnLoad:
    """Pickles in the worker; unpickling it (in the parent) raises SystemExit."""

    def __reduce__(self):
        return (_exit_on_load, ())


def exit_on_load_at(x):
    return ExitOnLoad() if x == 2 else x


def identity(x):
    return x


def fork_helper_then(path, action="exit", session=False):
    """Fork a helper that outlives the task (as a library that forks a helper does): it
    inherits every descriptor of the worker, its pipes and sentinel included. Its pid is left
    in ``path``. Then the task dies (``action="exit"``) or hangs (``action="hang"``)."""
    helper = os.fork()
    if helper == 0:
        if session:
            os.setsid()  # a daemon-like helper in a session and process group of its own
        time.sleep(60)
        os._exit(0)
    with open(path, "w") as f:
        f.write(str(helper))
    if action == "exit":
        os._exit(7)
    while True:
        time.sleep(1)


def bytes_after_gate(x, gate=None, size=20_000, wait=3.0):
    """Item 0 waits until ``gate`` (an allcores.Event) is set, at most ``wait`` seconds; every
    item returns ``size`` bytes."""
    if x == 0 and gate is not None:
        gate.wait(wait)
    return b"x" * size


def stall_mid_message(gate):
    """Write the first bytes of a message to the worker's result pipe and stop there (a worker
    stalled in the middle of a message), tell the test through ``gate``, then hang until killed.
    """
    frame = sys._getframe()
    while frame is not None and "result_conn" not in frame.f_locals:
        frame = frame.f_back
    assert frame is not None, "not running in an allcores worker"
    fd = frame.f_locals["result_conn"].fileno()
    os.write(fd, (1000).to_bytes(4, "big") + b"partial")
    gate.set()
    signal.pause()
