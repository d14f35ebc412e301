"""``clipwatch score``: score every clip of a video archive offline (resumable) to JSONL, CSV and a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.batch import list_videos, score_archive
from pipeline.cli import COMMAND_HELP, add_device_argument, command_device


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help=COMMAND_HELP["score"])
    parser.add_argument("--bundle", required=True, type=Path, help="detector bundle written by `clipwatch fit`")
    parser.add_argument("--data", required=True, type=Path, help="UCF101 root, video directory, or .txt file list")
    parser.add_argument("--split", help="with a UCF101 root: 1..3 (the test list of that split, as in the other "
                                        "commands), or train1..3 / test1..3")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (resumes when it has scores.jsonl of the same bundle)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the score files in --out when they come from another bundle")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int)
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = command_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    videos, classes, skipped = list_videos(args.data, args.split)
    summary = score_archive(args.bundle, videos, args.out, class_names=classes, batch_size=args.batch_size,
                            progress=not args.no_progress, skipped=skipped, overwrite=args.overwrite,
                            device=device, precision=args.precision)
    counts = ", ".join(f"{v} {n}" for v, n in summary["verdicts"].items())
    accuracy = f"; accuracy {summary['accuracy']:.3f}" if "accuracy" in summary else ""
    print(f"{summary['clips']} clips from {summary['videos']} videos: {counts}{accuracy}; "
          f"{len(summary['skipped'])} inputs skipped; results in {args.out}")
    return 0
