"""``clipwatch train DATA --out DIR``: train a clip classifier on a UCF101-layout dataset on the CPU."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.training import PRESETS, TrainConfig, TrainingError, latest_checkpoint, load_checkpoint, train

R3D_OPTIONS = ("width", "zero_init_residual", "conv1_t_size", "conv1_t_stride", "no_max_pool", "shortcut_type",
               "widen_factor")
"""Options of one r3d depth that carry over when --model picks another depth; other architectures start bare."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a clip classifier (CPU) and save it with its metrics",
        description="Train on split --split of DATA (UCF101 layout, e.g. from 'clipwatch synth'), evaluate on its "
                    "test list, and write model.safetensors + model.json, metrics.json, training_curve.png and "
                    "per-epoch checkpoints into --out. Options left out keep the preset's values.")
    parser.add_argument("data", help="dataset root (UCF101 layout with ucfTrainTestlist/)")
    parser.add_argument("--out", required=True, help="output folder (must not hold a run, unless --resume)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS), help="recipe (default %(default)s)")
    parser.add_argument("--model", help="architecture, e.g. r3d-18, r3d-10, c3d")
    parser.add_argument("--width", type=int, help="base width of an r3d model")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--split", type=int, choices=(1, 2, 3))
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest checkpoint (its settings are reused)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The preset (or, with --resume, the checkpoint's settings) with the options given on the command line."""
    if args.resume:
        found = latest_checkpoint(Path(args.out))
        if found is None:
            raise TrainingError(f"{args.out}: nothing to resume (no checkpoints/epoch-*.json)")
        base = load_checkpoint(found).config
    else:
        base = TrainConfig.preset(args.preset, data=args.data, out=args.out).to_json()
    overrides: dict[str, Any] = {"data": args.data, "out": args.out}
    for name in ("model", "epochs", "batch_size", "lr", "optimizer", "seed", "split", "threads"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    options = base["model_options"]
    if args.model is not None and args.model != base["model"]:
        options = {key: value for key, value in options.items() if key in R3D_OPTIONS} \
            if args.model.startswith("r3d-") else {}
    if args.width is not None:
        options = {**options, "width": args.width}
    overrides["model_options"] = options
    return TrainConfig.parse({**base, **overrides})


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    report = train(config, progress=not args.no_progress, resume=args.resume)
    resumed = f" (resumed after epoch {report.resumed_from_epoch})" if report.resumed_from_epoch is not None else ""
    skipped = f"; skipped {len(report.skipped)} unreadable videos" if report.skipped else ""
    print(f"trained {config.model} for {report.epochs} epochs{resumed} in {report.seconds / 60:.1f} min: "
          f"test clip accuracy {report.clip_accuracy:.3f}, video accuracy {report.video_accuracy:.3f}{skipped}; "
          f"model in {report.out}")
    return 0
