"""``python -m workers run|worker ...``: the ``clipwatch run`` and ``clipwatch worker`` commands, standalone."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import run as run_command
from pipeline.cli import worker as worker_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_command.register(subparsers)
    worker_command.register(subparsers)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"clipwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
