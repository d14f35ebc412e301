"""``clipwatch demo``: simulated camera feeds through the in-process pipeline with the shipped model and bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.demo import DEFAULT_BUNDLE, DEFAULT_FRAME, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="simulate cameras (normal, novel, attacked) and report the alerts")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="output folder: new, empty or an earlier demo's (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="use a non-empty folder the demo did not write, replacing only the demo's own entries")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="detector bundle (default: shipped)")
    parser.add_argument("--frame", type=Path, default=DEFAULT_FRAME, help="adversarial frame painted on the gate feed")
    parser.add_argument("--recordings", type=int, default=4, help="recordings per camera (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = run_demo(args.out, bundle=args.bundle, frame=args.frame, recordings=args.recordings, seed=args.seed,
                       progress=not args.no_progress, overwrite=args.overwrite)
    return 0 if len(summary["verdicts"]) == summary["expected_clips"] else 1
