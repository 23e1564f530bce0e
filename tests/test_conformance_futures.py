"""CPython's own tests of ``concurrent.futures``, run against ``allcores.Executor``.

The interpreter's ``test.test_concurrent_futures`` (a module up to 3.11, a package from 3.12) is
imported as it ships, never copied or edited. Every test class it builds for
``ProcessPoolExecutor`` (one per start method: fork, forkserver, spawn) gets a subclass here
whose ``executor_type`` is ``allcores.Executor``: that class attribute is how CPython's own
mixins choose the executor, so the same test bodies run against ours. pytest collects those
subclasses; nothing else of CPython's runs here (the thread-pool classes test another executor).

Some interpreters ship the standard library without its ``test`` package (the pyenv builds of
3.11 and 3.12 on our machines do): there the module is skipped and says so; ``make test``
runs it on every supported Python found, so it runs wherever one ships it (3.10 and 3.13 here).

``EXCLUDED`` lists every test that does not run, each with its one-line reason: a private
attribute of ProcessPoolExecutor it reads, or a documented, deliberate difference. None hides a
difference a user could meet through the public API.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
import unittest
from concurrent.futures import ProcessPoolExecutor

import pytest

import allcores

PRIVATE = "reads ProcessPoolExecutor's private {}, which allcores.Executor does not have"

CHILD = (
    "runs a child interpreter that imports the executor by its class name from "
    "concurrent.futures, so it cannot be pointed at allcores.Executor; "
    "tests/test_dropin.py runs the same script on allcores"
)
ITEM_ALONE = (
    "deliberate (docs/pool.md): {} fails that item alone and the executor goes on, where "
    "ProcessPoolExecutor breaks as a whole (BrokenProcessPool)"
)

EAGER = (
    "expects some of 50 futures to escape shutdown(cancel_futures=True) issued right after "
    "submit(): ProcessPoolExecutor marks max_workers + 1 running as soon as it queues them, "
    "allcores when a worker receives them, and spawn workers may still be starting: all may "
    "then be cancelled, as cancel_futures allows (fork too, on a loaded machine)"
)

# test name (or "Class.test") -> why it does not run against allcores.Executor.
EXCLUDED: dict[str, str] = {
    # Private attributes of ProcessPoolExecutor.
    "test_killed_child": PRIVATE.format("_processes"),
    "test_saturation": PRIVATE.format("_processes"),
    "test_idle_process_reuse_one": PRIVATE.format("_processes"),
    "test_idle_process_reuse_multiple": PRIVATE.format("_processes"),
    "test_max_tasks_per_child": PRIVATE.format("_processes"),
    "test_processes_terminate": PRIVATE.format("_processes"),
    "test_del_shutdown": PRIVATE.format("_executor_manager_thread and _call_queue"),
    "test_shutdown_no_wait": PRIVATE.format("_executor_manager_thread and _call_queue"),
    "test_shutdown_deadlock_pickle": PRIVATE.format("_executor_manager_thread"),
    "FailingInitializerTest.test_initializer": PRIVATE.format("_broken (polled)"),
    "test_max_tasks_per_child_defaults_to_spawn_context": PRIVATE.format("_mp_context")
    + "; deliberate: allcores keeps fork with max_tasks_per_child, forking replacements "
    "from its manager thread, which runs no user code (docs/pool.md)",
    "test_python_finalization_error": "makes the creation of ProcessPoolExecutor's second "
    "internal thread (its queue feeder) fail; allcores.Executor has no such thread",
    # Child interpreters that name the executor class.
    "test_interpreter_shutdown": CHILD,
    "test_submit_after_interpreter_shutdown": CHILD,
    "test_hang_gh83386": CHILD + " (CPython skips it for ProcessPoolExecutor: gh-83386)",
    # A future turns running when a worker receives it, not when it is queued for one.
    "test_cancel_futures": EAGER,
    # Deliberate differences: one bad item never breaks the executor.
    "test_error_at_task_unpickle": ITEM_ALONE.format(
        "an argument that fails to unpickle in the worker (ArgumentPicklingError)"
    ),
    "test_exit_at_task_unpickle": ITEM_ALONE.format(
        "an argument whose unpickling calls sys.exit() (ArgumentPicklingError)"
    ),
    "test_error_during_result_unpickle_in_result_handler": ITEM_ALONE.format(
        "a result that fails to unpickle in the parent (ResultPicklingError)"
    ),
    "test_exit_during_result_unpickle_in_result_handler": ITEM_ALONE.format(
        "a result whose unpickling calls sys.exit() (ResultPicklingError)"
    ),
}


def _cpython_modules() -> list[types.ModuleType]:
    try:
        package = importlib.import_module("test.test_concurrent_futures")
    except ImportError:
        return []
    if not hasattr(package, "__path__"):
        return [package]  # Python 3.10 and 3.11: one module
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.startswith("test_")
    ]


MODULES = _cpython_modules()
if not MODULES:
    pytest.skip(
        f"this interpreter (Python {sys.version.split()[0]}) does not ship "
        "test.test_concurrent_futures; `make test` runs the harness on every supported Python the machine has",
        allow_module_level=True,
    )


def _for_allcores(cls: type) -> type:
    """A subclass of one of CPython's process-pool test classes that runs on allcores."""
    namespace: dict = {"executor_type": allcores.Executor, "__module__": __name__}
    for attr in dir(cls):
        if not attr.startswith("test"):
            continue
        reason = EXCLUDED.get(attr) or next(
            (why for key, why in EXCLUDED.items()
             if "." in key and key == f"{cls.__name__[-len(key.partition('.')[0]):]}.{attr}"),
            None,
        )
        if reason is not None:
            namespace[attr] = unittest.skip(reason)(getattr(cls, attr))
    name = "Allcores" + cls.__name__
    namespace["__qualname__"] = name
    return type(name, (cls,), namespace)


def _process_pool_classes(module: types.ModuleType) -> list[type]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, unittest.TestCase)
        and getattr(value, "executor_type", None) is ProcessPoolExecutor
    ]


for _module in MODULES:
    for _cls in _process_pool_classes(_module):
        _sub = _for_allcores(_cls)
        globals()[_sub.__name__] = _sub
del _module, _cls, _sub


def test_the_harness_found_cpython_process_pool_tests():
    """A guard: an interpreter whose tests moved must not pass by collecting nothing."""
    classes = [c for m in MODULES for c in _process_pool_classes(m)]
    assert len(classes) >= 9  # at least three kinds of tests under three start methods
    ran = [n for c in classes for n in dir(c) if n.startswith("test") and n not in EXCLUDED]
    assert len(ran) >= 60
