"""The ``clipwatch`` command: one sub-command per module in this package, plus those other packages register.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (called with the
parsed arguments, returning an exit code). The commands that run the pipeline's processes (``run``, ``worker``,
``demo``) come from the ``clipwatch.commands`` entry points, so this library never imports the application.

Exit codes: 0 done; 2 for a problem with what the command was given (a `ClipwatchError`, or a file that cannot
be opened: one line naming it and why); 130 on Ctrl-C; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.metadata import entry_points

from pipeline import __version__
from pipeline.errors import ClipwatchError, one_line, redact

COMMAND_HELP = {
    "synth": "write the synthetic action dataset (UCF101 layout, novel classes under OUT/novel)",
    "train": "train or fine-tune a clip classifier and save it with its metrics",
    "fit": "fit a detector bundle for a model on a UCF101-style dataset",
    "attack": "attack clips of a dataset split and save them losslessly",
    "evaluate": "detection metrics, accuracies and figures (results.json/md)",
    "score": "score a UCF101 split, a directory or a file list of videos",
    "export": "export a bundle's classifier to ONNX, with its tapped layers as outputs, into a self-contained folder "
              "ONNX Runtime scores from",
    "alerts": "alert maintenance: replay dead-lettered webhook deliveries",
    "console": "serve the operator's console (alerts, cameras, acknowledgements) for a run's folder",
}
"""Each command module's one-line help, here so that listing the commands imports none of them."""
COMMAND_MODULES = tuple(COMMAND_HELP)
ENTRY_POINT_GROUP = "clipwatch.commands"
SHARED_CORE_COMMANDS = ("run", "demo")
"""Commands that run every pipeline stage in one process: see :func:`yield_idle_cores`."""


def yield_idle_cores(argv: list[str]) -> None:
    """Make OpenMP threads sleep instead of spin while they wait, for commands whose stages share the cores.

    libgomp's default spin-wait keeps the classifier's idle intra-op threads busy while the decoder and density
    threads need the cores (``benchmarks/pipeline.py`` measures the difference). Spinning is faster for a process that only runs the model
    (training, ``fit``), so only the multi-stage commands ask for passive waiting; the variable is read when torch
    loads, so this runs before any torch import, and a value the user set wins.
    """
    if command_name(argv) in SHARED_CORE_COMMANDS and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def in_range(low: float, high: float, *, high_inclusive: bool = False):
    """An argparse ``type`` for a float in ``(low, high)`` (or ``(low, high]``): a bad value is a usage error
    naming the option, before any work starts."""
    closing = "]" if high_inclusive else ")"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low < value < high or (high_inclusive and value == high)):
            raise argparse.ArgumentTypeError(f"must be in ({low:g}, {high:g}{closing}, got {text}")
        return value

    parse.__name__ = f"number in ({low:g}, {high:g}{closing}"  # argparse names the type in its messages
    return parse


def add_device_argument(parser: argparse.ArgumentParser, *, precision: str | None = None) -> None:
    """``--device`` (default cpu) and ``--precision`` for a command that runs a model; resolve the device first
    with :func:`command_device`. ``precision`` is the default (None: the bundle's)."""
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="where the model runs: cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--precision", default=precision, choices=("fp32", "bf16", "fp16", "auto"),
                        help="the model's arithmetic: auto is bf16 on CPUs with AMX or AVX-512-BF16 and on CUDA, "
                             f"fp32 elsewhere (default: {precision or 'the bundle' + chr(39) + 's'})")


def command_device(args: argparse.Namespace):
    """The ``torch.device`` of ``--device``, checked against this machine: a one-line `ClipwatchError` (exit 2) if
    it is malformed or not available here. Commands call it before any heavy work."""
    from pipeline.models.device import resolve_device  # imports torch: not before `yield_idle_cores`

    return resolve_device(args.device, source="--device")


DESCRIPTION = ("clipwatch finds novel and adversarial clips in camera video: train or fine-tune a video classifier, "
               "fit its detector, score archives, and run the streaming pipeline. Add -h after a command for its "
               "options.")


def command_name(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names (its first word that is not an option), or None."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None, *, listing: bool = False) -> argparse.ArgumentParser:
    """The ``clipwatch`` parser with every command, or only ``command`` when it is one: each command module imports
    what its work needs (torch, scikit-learn...), so running one command does not pay for all of them.

    ``listing``: when no command is named (``clipwatch --help``, a typo), the built-in commands are only listed, with
    their `COMMAND_HELP` line and no options, which imports none of them; such a parser can only print help and
    usage errors."""
    parser = argparse.ArgumentParser(prog="clipwatch", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"clipwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plugins = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda entry: entry.name)
    known = {*COMMAND_MODULES, *(entry.name for entry in plugins)}
    only = command if command in known else None
    for name in COMMAND_MODULES:
        if only is None and listing:
            subparsers.add_parser(name, help=COMMAND_HELP[name])
        elif only in (None, name):
            importlib.import_module(f"pipeline.cli.{name}").register(subparsers)
    for entry in plugins:
        if only not in (None, entry.name):
            continue
        try:
            register = entry.load()
        except Exception as exc:  # a broken plug-in must not take every other command down
            logging.getLogger(__name__).warning("command %r from %s not loaded: %s", entry.name, entry.value,
                                                one_line(exc))
            continue
        register(subparsers)
    if only is not None and not subparsers.choices:  # its plug-in failed to load: argparse lists the others
        return build_parser(listing=listing)
    _finish_commands(subparsers)
    return parser


def _finish_commands(subparsers: argparse._SubParsersAction) -> None:
    """Every command (nested ones too) takes -v after its name as well, and says what it does under -h."""
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    for name, command in subparsers.choices.items():
        if command.description is None and helps.get(name):
            command.description = helps[name][0].upper() + helps[name][1:] + "."
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _finish_commands(action)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    yield_idle_cores(argv)
    args = build_parser(command_name(argv), listing=True).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ClipwatchError as exc:
        print(f"clipwatch {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"clipwatch {args.command}: error: {redact(str(exc.filename))}: {exc.strerror or one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
