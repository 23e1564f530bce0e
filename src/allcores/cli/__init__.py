"""The ``allcores`` command: a thin layer over the library's batch tools.

Each subcommand lives in its own module ``allcores/cli/_cmd_<name>.py`` that defines
``register(subparsers)``; this module finds them, so adding a command touches no other file.
A command's heavy imports (Pillow, pandas, numpy) happen inside its handler, so ``--help``
is instant and a missing optional dependency prints the install hint instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import pkgutil
import sys
from collections.abc import Sequence

__all__ = ["add_backend_args", "count_arg", "main", "missing_extra"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allcores",
        description="Run CPU-heavy Python work on every core of this machine.",
        epilog="Run 'allcores COMMAND --help' for the options of each command.",
    )
    from allcores import __version__

    parser.add_argument("--version", action="version", version=f"allcores {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_cmd_"):
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def count_arg(text: str) -> int:
    """An argparse type for counts: 1000, 1e9 or 2_000_000, at least 1."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value.is_integer() and value >= 1):
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1: {text!r}")
    return int(value)


def add_backend_args(group: argparse._ActionsContainer) -> None:
    """``--backend`` and ``--address``: run a command's work on a Dask or Ray cluster.

    :func:`main` applies them around the command with ``allcores.backend(...)``, so the batch
    tools reach the cluster through the same calls as on this machine (docs/cluster.md).
    """
    group.add_argument(
        "--backend", choices=("processes", "dask", "ray"), default=None,
        help="where the work runs: this machine's processes (default, or $ALLCORES_BACKEND), "
             "a Dask or a Ray cluster",
    )
    group.add_argument(
        "--address", default=None, metavar="ADDR",
        help="the cluster's scheduler: tcp://HOST:8786 (Dask), HOST:6379 or auto (Ray); "
             "without it a local cluster is started for the run",
    )


def missing_extra(package: str, extra: str) -> SystemExit:
    """The error a command raises when an optional dependency is not installed."""
    return SystemExit(
        f"allcores: this command needs {package}, which is not installed.\n"
        f"Install it with: pip install 'allcores[{extra}]'"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``allcores`` console script and ``python -m allcores``."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    backend, address = getattr(args, "backend", None), getattr(args, "address", None)
    if address is not None and backend is None:
        parser.error("--address needs --backend dask or --backend ray")
    try:
        if backend is None:
            return int(args.handler(args) or 0)
        from allcores.backends import backend as run_on

        with run_on(backend, address):
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("allcores: interrupted", file=sys.stderr)
        return 130
