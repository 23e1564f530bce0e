"""Real clusters for the tests, started once per test module: a Dask ``LocalCluster`` of two
one-thread worker processes, and a local Ray with two CPUs. Loopback addresses only.

Their long-lived processes are registered with the suite's leak check (``CLUSTER_ROOTS`` in
conftest.py) while they are up; see there why.
"""

from __future__ import annotations

import contextlib
import copyreg
import sys

import cloudpickle
import psutil
import pytest

import _cluster_tasks
from conftest import CLUSTER_ROOTS

cloudpickle.register_pickle_by_value(_cluster_tasks)

# A cold start takes 2-8 s on the 2-core machine; a slow machine gets ample room.
START_TIMEOUT = 120


@contextlib.contextmanager
def pickling_left_alone():
    """Importing ``distributed`` installs tblib's reducer for every exception class in
    ``copyreg.dispatch_table``, for the whole process (and the workers it forks). The local
    engine's tests of exceptions that fail to unpickle must see the standard behaviour, so a
    cluster module puts the table back as it found it when it ends."""
    saved = dict(copyreg.dispatch_table)
    try:
        yield
    finally:
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(saved)


@contextlib.contextmanager
def _registered_children():
    """Register the processes started inside the block as cluster roots, until it exits."""
    before = {c.pid for c in psutil.Process().children()}
    started: set[int] = set()

    def register() -> None:
        for child in psutil.Process().children():
            if child.pid not in before:
                started.add(child.pid)
        CLUSTER_ROOTS.update(started)

    try:
        yield register
    finally:
        CLUSTER_ROOTS.difference_update(started)


def dask_cluster():
    """A generator for a module fixture: yields a ``distributed.Client``."""
    with pickling_left_alone():
        yield from _dask_cluster()


def _dask_cluster():
    distributed = pytest.importorskip("distributed")
    with _registered_children() as register:
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
        )
        client = distributed.Client(cluster, set_as_default=False)
        client.wait_for_workers(2, timeout=START_TIMEOUT)
        register()
        try:
            yield client
        finally:
            _close_backends()
            client.close()
            cluster.close()


def ray_cluster():
    """A generator for a module fixture: yields the ``ray`` module, initialised."""
    with pickling_left_alone():
        yield from _ray_cluster()


def _ray_cluster():
    ray = pytest.importorskip("ray")
    with _registered_children() as register:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        register()
        ref = ray.put(0)  # start the driver's lazily started threads before any test
        ref.future().result(timeout=START_TIMEOUT)
        try:
            yield ray
        finally:
            _close_backends()
            ray.shutdown()


def _close_backends() -> None:
    oneliners = sys.modules.get("allcores._oneliners")
    if oneliners is not None:
        oneliners.shutdown()
    backends = sys.modules.get("allcores.backends")
    if backends is not None:
        backends.close_all()
