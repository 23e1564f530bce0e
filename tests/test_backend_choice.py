"""Choosing where a call runs: argument, ``allcores.backend()``, environment; bad choices fail
at once with a message that says what to pass. No cluster is started here."""

from __future__ import annotations

import subprocess
import sys

import pytest

import allcores
from allcores import backends


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="'dask'.*'ray'"):
        allcores.map(abs, [1], backend="spark")
    with pytest.raises(ValueError, match="unknown backend"):
        with allcores.backend("spark"):
            pass


def test_address_without_backend_is_refused():
    with pytest.raises(ValueError, match="backend="):
        allcores.map(abs, [1], address="tcp://127.0.0.1:8786")


def test_processes_takes_no_address():
    with pytest.raises(ValueError, match="no address"):
        allcores.map(abs, [1], backend="processes", address="tcp://127.0.0.1:8786")


def test_precedence_argument_then_context_then_environment(monkeypatch):
    monkeypatch.setenv("ALLCORES_BACKEND", "ray")
    monkeypatch.setenv("ALLCORES_ADDRESS", "127.0.0.1:1")
    assert backends.requested() == ("ray", "127.0.0.1:1")
    with allcores.backend("dask", address="tcp://127.0.0.1:2"):
        assert backends.requested() == ("dask", "tcp://127.0.0.1:2")
        assert backends.requested("processes") == (None, None)
        with allcores.backend("processes"):
            assert backends.requested() == (None, None)
            assert allcores.map(abs, [-1]) == [1]  # runs here, whatever the environment says
    assert backends.requested() == ("ray", "127.0.0.1:1")
    monkeypatch.delenv("ALLCORES_BACKEND")
    monkeypatch.delenv("ALLCORES_ADDRESS")
    assert backends.requested() == (None, None)


def test_cli_address_needs_backend():
    out = subprocess.run(
        [sys.executable, "-m", "allcores", "simulate", "pi", "--samples", "1000",
         "--address", "tcp://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "--address needs --backend" in out.stderr


def test_import_allcores_imports_no_engine():
    code = ("import sys, allcores; allcores.backends; "
            "print([m for m in ('dask', 'distributed', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
