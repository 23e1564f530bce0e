"""How functions, items and results cross the process boundary.

Functions travel with cloudpickle (lambdas, closures and ``__main__`` functions work under every
start method; importable functions still go by reference). Data travels with the standard pickle
at the highest protocol, which is several times faster than cloudpickle for plain data.
"""

from __future__ import annotations

import pickle
import reprlib
from typing import Any

__all__ = ["ByValue", "dumps", "dumps_function", "item_repr", "loads", "loads_function"]

PROTOCOL = pickle.HIGHEST_PROTOCOL

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 6
_short.maxtuple = 6
_short.maxdict = 4


def item_repr(item: object) -> str:
    """A short, safe repr of an item for error messages."""
    try:
        return _short.repr(item)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        return f"<{type(item).__name__} object (repr failed: {exc!r})>"


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def dumps_function(fn: Any) -> bytes:
    """Pickle a task's function, by value when it cannot be imported by name.

    A function of an importable module goes by reference with the standard pickle first, as the
    standard pools send it: cloudpickle would send some of those by value (a classmethod, whose
    attribute is not the function itself), and a function rebuilt from its code object loses
    its source lines in the worker's traceback. Lambdas, closures and ``__main__`` functions
    (which a spawned worker may not be able to import) go by value with cloudpickle.
    """
    if getattr(fn, "__module__", None) not in (None, "__main__", "__mp_main__"):
        try:
            return pickle.dumps(fn, PROTOCOL)
        except Exception:
            pass  # a lambda, a local function: by value below
    import cloudpickle  # imported on first use: `import allcores` stays light

    return cloudpickle.dumps(fn, PROTOCOL)


def loads_function(blob: bytes) -> Any:
    return pickle.loads(blob)


class ByValue:
    """Wraps a function so that pickling it pickles the function by value (cloudpickle), while
    the objects beside it (a Process's other arguments) go through the ordinary pickler; it
    unpickles as the bare function. A forked child inherits the wrapper unpickled: use
    :func:`unwrap`."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (loads_function, (dumps_function(self.fn),))


def unwrap(fn: Any) -> Any:
    """The function inside a :class:`ByValue` (or ``fn`` itself)."""
    return fn.fn if isinstance(fn, ByValue) else fn


def pickling_hint(what: str, obj: object, exc: BaseException) -> str:
    """The message for something that cannot be pickled: what failed, and how to fix it."""
    name = type(obj).__name__
    text = f"{what} {item_repr(obj)} (type {name}) cannot be pickled: {exc}."
    low = str(exc).lower()
    if "lock" in low or "semlock" in low:
        text += (
            " Locks cannot be sent to another process; pass an allcores.Lock "
            "(or allcores.Semaphore, allcores.Queue) instead, which can."
        )
    elif "generator" in low:
        text += " Generators cannot be pickled; pass the values (e.g. list(gen)) instead."
    elif "file" in low or "socket" in low or "connection" in low:
        text += (
            " Open files, sockets and connections cannot be sent; pass a path or URL and open it "
            "inside the task (or once per worker with an initializer)."
        )
    else:
        text += (
            " Pass plain data (numbers, strings, lists, dicts, numpy arrays) or an object whose "
            "class is importable and defines __reduce__ / __getstate__."
        )
    return text
