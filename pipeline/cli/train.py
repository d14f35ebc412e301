"""``clipwatch train DATA --out DIR``: learn a UCF101-layout dataset's classes, by default by fine-tuning the shipped
``base`` backbone (``--preset finetune``); ``--init scratch --preset default`` is the from-scratch recipe of the
shipped ``default`` model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from pipeline.cli import COMMAND_HELP
from pipeline.models.device import resolve_device
from pipeline.training import PRESETS, TrainConfig, TrainingError, latest_checkpoint, load_checkpoint
from pipeline.training.transfer import config_from_init, fixed_input_size, read_init

R3D_OPTIONS = ("width", "zero_init_residual", "conv1_t_size", "conv1_t_stride", "no_max_pool", "shortcut_type",
               "widen_factor")
"""Options of one r3d depth that carry over when --model picks another depth; other architectures start bare."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help=COMMAND_HELP["train"],
        description="Train on split --split of DATA (UCF101 layout, e.g. from 'clipwatch synth'), evaluate on its "
                    "test list, and write model.safetensors + model.json, metrics.json, training_curve.png and "
                    "per-epoch checkpoints into --out. By default (preset finetune) the shipped base backbone is "
                    "fine-tuned with its head re-initialised for DATA's classes, on every training video, and its last epoch "
                    "is kept (--val-fraction carves a validation split to choose the epoch by). Options left out keep "
                    "the preset's values.")
    parser.add_argument("data", help="dataset root (UCF101 layout with ucfTrainTestlist/)")
    parser.add_argument("--out", required=True, help="output folder (must not hold a run, unless --resume)")
    parser.add_argument("--preset", default="finetune", choices=sorted(PRESETS), help="recipe (default %(default)s)")
    parser.add_argument("--init", help="weights to start from: scratch, a shipped model (base, the default; default), a "
                                       "model folder, a "
                                       "checkpoint file (.pth/.pt/.safetensors, e.g. Hara et al.'s 3D-ResNets), or "
                                       "pytorchvideo:NAME[:CHECKPOINT] (x3d_s, slow_r50, r2plus1d_r50, ...; extra "
                                       "clipwatch[pytorchvideo])")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--symmetries", type=Path,
                        help="YAML of label-mapping symmetries {name: {class: class}} (default: the preset's)")
    parser.add_argument("--val-fraction", type=float, help="training groups held out to choose the best epoch (default "
                                                               "0 with the finetune preset: the last epoch is kept)")
    parser.add_argument("--patience", type=int, help="validations below the best before stopping")
    parser.add_argument("--outliers", choices=("none", "auto"),
                        help="auto: outlier exposure with clips made from each batch (shuffled frames, spliced classes)")
    parser.add_argument("--loss", choices=("ce", "objectosphere"),
                        help="objectosphere: known clips keep a large feature norm, outliers a small one "
                             "(needs --outliers auto)")
    parser.add_argument("--backbone-lr-ratio", type=float, help="learning rate of all but the head, times --lr")
    parser.add_argument("--freeze-through", metavar="MODULE",
                        help="keep the init's weights of every module up to and including MODULE (e.g. layer3), so "
                             "its features stay the pretrained ones")
    parser.add_argument("--input-size", type=int, metavar="PX",
                        help="side of the model's square input (frames are resized to this short side, then "
                             "cropped or, with --fit stretch, squeezed to it); default: the preset's (finetune: 128)")
    parser.add_argument("--fit", choices=("crop", "stretch"),
                        help="how frames become the model's square input: crop keeps the aspect ratio and drops the "
                             "sides of a wide frame, stretch squeezes in the whole field of view")
    parser.add_argument("--frame-step", type=int, metavar="N",
                        help="take every N-th frame into a clip; a larger step lets a clip of the same frames span "
                             "more time (default: the preset's for a 3D ResNet, finetune: 3; else the init's)")
    parser.add_argument("--model", help="architecture, e.g. r3d-18, r3d-10, c3d")
    parser.add_argument("--width", type=int, help="base width of an r3d model")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--clips-per-video", type=int, help="training clips drawn from each video per epoch")
    parser.add_argument("--min-scale", type=float,
                        help="zoom augmentation: training windows of this to 1 times the frame's short side")
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
    input_size = args.input_size
    if args.resume:
        found = latest_checkpoint(Path(args.out))
        if found is None:
            raise TrainingError(f"{args.out}: nothing to resume (no checkpoints/epoch-*.json)")
        base = load_checkpoint(found).config
    else:
        base = TrainConfig.preset(args.preset, data=args.data, out=args.out).to_json()
        if args.init is not None:
            base["init"] = args.init
        init = read_init(base["init"])
        base = config_from_init(base, init)
        fixed = fixed_input_size(init)
        if input_size is not None and fixed is not None:
            if input_size != fixed["crop"]:
                raise TrainingError(f"--input-size {input_size}: {init.source} takes {fixed['crop']}x{fixed['crop']} "
                                    "inputs only (its layers are sized for them)")
            input_size = None  # the init's already, with its own short side
    if args.device is not None:
        resolve_device(args.device, source="--device")
    overrides: dict[str, Any] = {"data": args.data, "out": args.out}
    for name in ("model", "epochs", "batch_size", "lr", "optimizer", "seed", "split", "threads", "device",
                 "val_fraction", "patience", "backbone_lr_ratio", "freeze_through", "outliers", "loss", "fit",
                 "clips_per_video", "min_scale", "frame_step"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if input_size is not None:
        overrides.update(short_side=input_size, crop=input_size)
    if args.symmetries is not None:
        overrides["symmetries"] = read_symmetries(args.symmetries)
    options = base["model_options"]
    if args.model is not None and args.model != base["model"]:
        options = {key: value for key, value in options.items() if key in R3D_OPTIONS} \
            if args.model.startswith("r3d-") else {}
    if args.width is not None:
        options = {**options, "width": args.width}
    overrides["model_options"] = options
    return TrainConfig.parse({**base, **overrides})


def run(args: argparse.Namespace) -> int:
    from pipeline.training.trainer import train  # matplotlib and SciPy: not for building the parser

    config = build_config(args)
    report = train(config, progress=not args.no_progress, resume=args.resume)
    resumed = f" (resumed after epoch {report.resumed_from_epoch})" if report.resumed_from_epoch is not None else ""
    skipped = f"; skipped {len(report.skipped)} unreadable videos" if report.skipped else ""
    print(f"trained {config.model} for {report.epochs} epochs{resumed} in {report.seconds / 60:.1f} min: "
          f"test clip accuracy {report.clip_accuracy:.3f}, video accuracy {report.video_accuracy:.3f}{skipped}; "
          f"model in {report.out}")
    return 0


def read_symmetries(path: Path) -> dict[str, dict[str, str]]:
    """The symmetry tables of a YAML file: ``{name: {class: class it becomes}}`` (checked by the config)."""
    try:
        tables = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise TrainingError(f"{path}: cannot read symmetries ({str(error).splitlines()[0]})") from None
    if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
        raise TrainingError(f"{path}: symmetries must be a mapping of names to {{class: class}} tables")
    return {str(name): {str(a): str(b) for a, b in table.items()} for name, table in tables.items()}
