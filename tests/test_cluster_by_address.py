"""A cluster started the way a user starts one on several machines, here on loopback only:
``dask scheduler`` + ``dask worker`` processes, and ``ray start --head``; allcores connects by
address (library and command line), then the cluster is shut down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import allcores
from _cluster import START_TIMEOUT, pickling_left_alone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module", autouse=True)
def _restore_pickling():
    with pickling_left_alone():
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _close_allcores() -> None:
    allcores.shutdown()
    allcores.backends.close_all()


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> dict:
    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-m", "allcores", *args], capture_output=True,
                         text=True, timeout=START_TIMEOUT * 2, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _simulate(*extra: str, env: dict[str, str] | None = None) -> dict:
    return _cli("simulate", "pi", "--samples", "2e6", "--seed", "7", "--json", *extra,
                env_extra=env)


def test_dask_scheduler_and_workers_by_address():
    pytest.importorskip("distributed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nworkers", "2",
             "--nthreads", "1", "--dashboard-address", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            assert allcores.map(abs, range(-50, 0), backend="dask", address=address) == list(
                range(50, 0, -1))
        finally:
            _close_allcores()
        local = _simulate()
        remote = _simulate("--backend", "dask", "--address", address)
        assert remote["estimate"] == local["estimate"]  # same seed, same answer, anywhere
        via_env = _simulate(env={"ALLCORES_BACKEND": "dask", "ALLCORES_ADDRESS": address})
        assert via_env["estimate"] == local["estimate"]
    finally:
        _stop(procs)


def test_ray_head_by_address():
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # A driver that connects by address speaks without Ray's token unless told to; the
        # head must agree (a real cluster sets RAY_AUTH_MODE=token and the token everywhere).
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        start_new_session=True)  # its own process group: stopped as one below
    try:
        try:
            assert allcores.map(abs, range(-50, 0), backend="ray", address=address) == list(
                range(50, 0, -1))
        finally:
            _close_allcores()
        local = _simulate()
        remote = _simulate("--backend", "ray", "--address", address)
        assert remote["estimate"] == local["estimate"]
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
