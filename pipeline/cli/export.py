"""``clipwatch export``: a detector bundle's classifier to ONNX (tapped layers as outputs), checked against torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import COMMAND_HELP
from pipeline.export import export_bundle
from pipeline.export.exporter import DEFAULT_OPSET


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=COMMAND_HELP["export"])
    parser.add_argument("--bundle", required=True, type=Path, help="detector bundle written by `clipwatch fit`")
    parser.add_argument("--out", required=True, type=Path,
                        help="new or empty folder for model.onnx, export.json and a copy of the bundle")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    parser.add_argument("--check-clips", type=int, default=4,
                        help="random clips run through torch and ONNX Runtime to compare them (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = export_bundle(args.bundle, args.out, overwrite=args.overwrite, opset=args.opset,
                             check_clips=args.check_clips)
    check = manifest["verification"]
    worst = max(check["max_relative_difference"].values())
    print(f"exported {manifest['source_model']['id']} with {len(manifest['outputs']['features'])} tapped layers to "
          f"{args.out / manifest['model_file']} (opset {manifest['opset']}); torch vs ONNX Runtime on "
          f"{check['clips']} random clips: largest relative difference {worst:.2g}")
    return 0
