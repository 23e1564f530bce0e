"""``--apply module:function``: a user's function, found by name in the parent and the workers.

This runs code: whatever ``module`` is found first is imported (and its top level executed)
in the parent and in every worker. Use it only with modules you trust, from a folder you
trust (docs/security.md). The folder is put on ``sys.path`` for that one import only, so a
file planted in the current folder (``numpy.py``, say) cannot shadow a later import.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ImportedFunction", "load_function"]


@dataclass(frozen=True)
class ImportedFunction:
    """A picklable handle on ``module:function`` that imports it where it is called.

    Workers may start by spawn/forkserver, without the parent's ``sys.path``; the handle
    carries the folder the module was found from (the current directory, as ``python -m``
    does), so ``--apply mystats:summary`` works for a ``mystats.py`` beside the data.
    """

    spec: str
    path_entry: str
    _fn: list[Any] = field(default_factory=list, compare=False, repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._fn:
            self._fn.append(_resolve(self.spec, self.path_entry))
        return self._fn[0](*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "path_entry": self.path_entry}  # never the function

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "spec", state["spec"])
        object.__setattr__(self, "path_entry", state["path_entry"])
        object.__setattr__(self, "_fn", [])


def load_function(spec: str) -> ImportedFunction:
    """Check ``module:function`` now (in the parent) and return a handle for the workers.

    Raises ValueError with what to do when the module or the function cannot be found.
    """
    handle = ImportedFunction(spec, os.getcwd())
    handle._fn.append(_resolve(spec, handle.path_entry))
    return handle


_path_lock = threading.Lock()


def _import_from(module_name: str, path_entry: str) -> Any:
    """Import ``module_name`` with ``path_entry`` first on ``sys.path`` for this import only."""
    with _path_lock:
        added = path_entry not in sys.path
        if added:
            sys.path.insert(0, path_entry)
        try:
            return importlib.import_module(module_name)
        finally:
            if added:
                try:
                    sys.path.remove(path_entry)
                except ValueError:  # the module itself took it off: nothing to undo
                    pass


def _resolve(spec: str, path_entry: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected module:function (like mystats:summary), got {spec!r}")
    try:
        obj: Any = _import_from(module_name, path_entry)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} for {spec!r} ({exc}); run from the folder "
            "that holds it or put it on PYTHONPATH"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj
