"""The ``clipwatch`` command: one sub-command per module in this package.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pipeline import __version__

COMMAND_MODULES = ("synth", "train", "fit", "attack", "evaluate", "score", "run", "worker", "alerts", "demo")
SHARED_CORE_COMMANDS = ("run", "demo")
"""Commands that run every pipeline stage in one process: see :func:`yield_idle_cores`."""


def yield_idle_cores(argv: list[str]) -> None:
    """Make OpenMP threads sleep instead of spin while they wait, for commands whose stages share the cores.

    libgomp's default spin-wait keeps the classifier's idle intra-op threads busy while the decoder and density
    threads need the cores: on two cores a full-width r3d-18 pipeline ran at 0.57 of its bare forward with spinning
    forced and 0.92 with ``OMP_WAIT_POLICY=PASSIVE``. Spinning is faster for a process that only runs the model
    (training, ``fit``), so only the multi-stage commands ask for passive waiting; the variable is read when torch
    loads, so this runs before any torch import, and a value the user set wins.
    """
    command = next((arg for arg in argv if arg in COMMAND_MODULES), None)
    if command in SHARED_CORE_COMMANDS and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"clipwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"pipeline.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    yield_idle_cores(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"clipwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
