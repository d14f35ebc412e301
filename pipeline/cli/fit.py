"""``clipwatch fit``: fit a detector bundle (reducers, densities, calibration) for a model on a UCF101-style dataset."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.attacks import Normalize, from_uint8, to_uint8
from pipeline.cli import COMMAND_HELP, add_device_argument, command_device, in_range
from pipeline.data import UCF101
from pipeline.data.ucf101 import DatasetError
from pipeline.detect import BundleError, DetectorBundle, extract_video_features
from pipeline.detect.bundle import HEATMAP_DIR
from pipeline.detect.evidence import BORDER_KEY, HEATMAP_KEY, Evidence, default_border
from pipeline.detect.features import ClipFeatures, extract_clip_features, load_clips, model_device, pixel_batches
from pipeline.detect.fusion import auxiliary_outliers, choose_fused_groups
from pipeline.detect.zoo.heatmap import DECODER_FILES, HeatmapDetector
from pipeline.fileio import seal_directory
from pipeline.models import default_layers, file_sha256, load_model, resolve_model_dir
from pipeline.models.io import SHIPPED_MODELS
from pipeline.models.precision import model_precision, prepare_for_inference

EVIDENCE_NAMES = {"heatmap": HEATMAP_KEY, "border": BORDER_KEY}
"""``--evidence`` names and the keys they fuse."""
AUXILIARY_CLIPS = 500
"""At most this many calibration clips (two per video) make the auxiliary outliers of ``--fused-groups auto``."""
AUXILIARY_CHUNK = 32
"""Calibration clips turned into outliers and scored at once (memory: five float copies of this many clips)."""

MODEL_DIR = "model"
"""Where a bundle keeps a copy of a model that is not shipped, so the bundle moves as one folder."""


MODEL_FILES = ("model.json", "model.safetensors")
"""What a bundle keeps of a model that is not shipped (a training run's ``digests.json`` is not kept: the bundle's
own digests cover the copy)."""


def model_reference(name_or_path: str, bundle_dir: str | Path | None = None) -> dict:
    """How a bundle points at its model, with the weights' and manifest's SHA-256: a shipped model by name; any
    other model copied into ``bundle_dir/model`` and referenced relative to the bundle (by absolute path without
    a `bundle_dir`)."""
    directory = resolve_model_dir(name_or_path)
    reference = {"name": name_or_path if name_or_path in SHIPPED_MODELS else None, "path": str(directory.resolve()),
                 "sha256": file_sha256(directory / "model.safetensors"),
                 "manifest_sha256": file_sha256(directory / "model.json")}
    if reference["name"] is None and bundle_dir is not None:
        copy = Path(bundle_dir) / MODEL_DIR
        if copy.resolve() != directory.resolve():  # refitting a bundle in place keeps the model it holds
            stale = {p.name for p in copy.iterdir()} - set(MODEL_FILES) if copy.is_dir() else set()
            if stale and not (Path(bundle_dir) / "bundle.json").is_file():
                raise BundleError(f"{copy}: holds {sorted(stale)[0]!r}, which no bundle wrote; choose another --out")
            copy.mkdir(parents=True, exist_ok=True)
            for name in MODEL_FILES:
                shutil.copyfile(directory / name, copy / name)
            for name in stale:  # what an earlier bundle's model copy left, e.g. a training run's seal
                if (copy / name).is_file():
                    (copy / name).unlink()
        reference.update(path=MODEL_DIR, relative_to_bundle=True)
    return reference


def split_calibration(samples, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out whole UCF101 groups (never clips of a training video) for calibration."""
    groups = sorted({s.group for s in samples})
    rng = np.random.default_rng(seed)
    count = max(1, int(round(fraction * len(groups))))
    held = set(rng.choice(groups, size=count, replace=False).tolist())
    return [s for s in samples if s.group not in held], [s for s in samples if s.group in held]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fit", help=COMMAND_HELP["fit"])
    parser.add_argument("--model", default="default", help="model directory or shipped name (default: %(default)s)")
    parser.add_argument("--data", required=True, help="dataset root in the UCF101 layout")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--layers", nargs="+", help="layers to tap (default: the architecture's default layers)")
    parser.add_argument("--low-level-layers", nargs="*",
                        help="tapped layers fused apart as low-level evidence (default: all but the last two)")
    parser.add_argument("--densities", nargs="+", default=["gmm", "sep", "tied"], choices=["gmm", "sep", "tied"])
    parser.add_argument("--fused-density", default="sep", choices=["gmm", "sep", "tied"])
    parser.add_argument("--output-score", default="energy", choices=["energy", "none"],
                        help="fuse the logits' energy as a third group (novel activities no known class fits; "
                             "needs the head's output tapped, e.g. fc; default %(default)s)")
    parser.add_argument("--variance", type=in_range(0, 1, high_inclusive=True), default=0.995, help="PCA variance kept (default %(default)s)")
    parser.add_argument("--pool-factor", type=int, default=4)
    parser.add_argument("--false-alarm", type=in_range(0, 1), default=0.01, help="target false-alarm rate (default 1%%)")
    parser.add_argument("--calibration-data",
                        help="in-distribution videos the model never trained on (UCF101 layout, every video of "
                             "both subsets) to calibrate on; the densities then use the whole training split")
    parser.add_argument("--calibration-fraction", type=in_range(0, 1), default=0.2,
                        help="fraction of training groups held out from the densities for calibration (default "
                             "%(default)s; not used with --calibration-data)")
    parser.add_argument("--stride", type=int, help="frames between clip starts (default: the clip length)")
    parser.add_argument("--heatmap", action="store_true",
                        help="also train an OOD heatmap decoder on the training clips (pipeline.detect.zoo.heatmap): "
                             "alert thumbnails then show where a clip differs from the training data")
    parser.add_argument("--heatmap-epochs", type=int, default=10, help="passes of the decoder over the training clips")
    parser.add_argument("--evidence", nargs="*", default=[], choices=EVIDENCE_NAMES,
                        help="evidence fused besides the densities, one group each (pipeline.detect.evidence): "
                             "'heatmap' (the decoder's mean heatmap; implies --heatmap), 'border' (does the "
                             "prediction survive masking the frame's border band; a second forward pass per clip)")
    parser.add_argument("--border", type=int,
                        help="width in model-input pixels of the band 'border' masks (default: 5%% of the crop)")
    parser.add_argument("--fused-groups", nargs="+", default=["auto"], metavar="GROUP",
                        help="groups the fused score is the lowest of: 'auto' (default) leaves out those that hide "
                             "auxiliary outliers made from the calibration clips (shuffled, spliced, locally "
                             "corrupted, one gradient step; pipeline.detect.fusion), 'all', or names among "
                             "low-level, semantic, output and the evidence's (border, heatmap)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(parser, precision="fp32")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = command_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, manifest = load_model(args.model, map_location=device)
    model, _ = prepare_for_inference(model, args.precision, device=device)
    layers = args.layers or default_layers(manifest.architecture)
    dataset = UCF101(args.data, split=args.split, subset="train", missing="skip")
    if list(dataset.classes) != list(manifest.class_names):
        raise DatasetError(f"{args.data}: classes {dataset.classes} differ from the model's {list(manifest.class_names)}")
    low_level = layers[:-2] if args.low_level_layers is None else args.low_level_layers
    prep = manifest.preprocessing
    border = args.border if args.border is not None else default_border(prep.crop)
    if "border" not in args.evidence and args.border is not None:
        raise BundleError("--border sets the band of --evidence border, which was not asked for")
    if not 1 <= border or 2 * border >= prep.crop:
        raise BundleError(f"--border {border}: must be at least 1 and below half the model's {prep.crop}-pixel input")
    heatmap_dir = Path(args.out) / HEATMAP_DIR
    if heatmap_dir.exists():  # checked now, before minutes of training; removed once the new bundle is written
        foreign = {p.name for p in heatmap_dir.iterdir()} - set(DECODER_FILES) if heatmap_dir.is_dir() else {"?"}
        if foreign or not (Path(args.out) / "bundle.json").is_file():
            raise BundleError(f"{heatmap_dir}: holds files no bundle wrote; choose another --out")
    train_videos, calibration_videos = calibration_videos_for(args, dataset)
    common = dict(batch_size=args.batch_size, pool_factor=args.pool_factor, stride=args.stride,
                  progress=not args.no_progress)
    heatmap = None
    if args.heatmap or "heatmap" in args.evidence:  # first: the calibration clips' evidence may need it
        started = time.perf_counter()
        videos = [(s.path, s.label) for s in train_videos]
        heatmap = HeatmapDetector(epochs=args.heatmap_epochs, batch_size=args.batch_size, seed=args.seed).fit_clips(
            model, lambda: pixel_batches(videos, prep, args.batch_size), Normalize.from_preprocessing(prep))
        print(f"heatmap decoder trained in {time.perf_counter() - started:.0f} s, loss "
              f"{heatmap.losses_[0]:.4f} -> {heatmap.losses_[-1]:.4f}")
    evidence = Evidence(tuple(EVIDENCE_NAMES[name] for name in dict.fromkeys(args.evidence)), heatmap, border)
    train = extract_video_features(model, prep, [(s.path, s.label) for s in train_videos], layers,
                                   description="train clips", **common)
    calibration = extract_video_features(model, prep, [(s.path, s.label) for s in calibration_videos], layers,
                                         description="calibration clips", evidence=evidence, **common)
    for path, reason in train.skipped + calibration.skipped:
        print(f"skipped {path}: {reason}")
    bundle = DetectorBundle.fit(
        train, calibration, model_ref=model_reference(args.model, args.out), class_names=list(manifest.class_names),
        densities=args.densities, fused_density=args.fused_density, variance=args.variance,
        pool_factor=args.pool_factor, false_alarm=args.false_alarm, seed=args.seed, low_level_layers=low_level,
        output_score=None if args.output_score == "none" else args.output_score,
        provenance={"dataset": str(Path(args.data).resolve()), "split": args.split, "precision": model_precision(model),
                    "calibration_data": str(Path(args.calibration_data).resolve()) if args.calibration_data else None},
        border=border, progress=not args.no_progress)
    unfused = unfused_groups(args, bundle, model, prep, calibration_videos, calibration, evidence)
    if unfused:
        bundle.calibrate(calibration, unfused_groups=unfused)
    if heatmap_dir.exists():  # an earlier bundle's decoder, fitted to other features, goes; nothing else is touched
        for name in DECODER_FILES:
            (heatmap_dir / name).unlink(missing_ok=True)
        heatmap_dir.rmdir()
    bundle.save(args.out)
    if heatmap is not None:
        heatmap.save(heatmap_dir)
        seal_directory(args.out)
    print(f"bundle written to {args.out}: {len(train)} train clips, {len(calibration)} calibration clips, "
          f"layers {layers}, {time.perf_counter() - start:.0f} s")
    print(f"  fused groups: {', '.join(bundle.calibration.fused_groups)}"
          + (f" (left out: {', '.join(unfused)})" if unfused else ""))
    if evidence.keys:
        print(f"  evidence fused: {', '.join(evidence.keys)}"
              + (f" (border band {border} px)" if BORDER_KEY in evidence.keys else ""))
    for layer in layers:
        print(f"  {layer}: {bundle.reducers[layer].n_features_in_} -> {bundle.reducers[layer].n_components_} dims")
    summary = _regularisation_summary(bundle.densities)
    if summary:
        print(summary)
    return 0


def unfused_groups(args: argparse.Namespace, bundle: DetectorBundle, model, prep, videos: list,
                   calibration: ClipFeatures, evidence: Evidence) -> list[str]:
    """The groups ``--fused-groups`` leaves out of the fused score; with ``auto``, chosen on auxiliary outliers made
    from up to :data:`AUXILIARY_CLIPS` calibration clips (:func:`choose_fused_groups`), recorded in the settings."""
    groups = list(bundle.calibration.groups)
    asked = list(dict.fromkeys(args.fused_groups))
    if asked == ["all"] or (asked == ["auto"] and len(groups) == 1):
        return []
    if asked != ["auto"]:
        unknown = [name for name in asked if name not in groups]
        if unknown:
            raise BundleError(f"--fused-groups {' '.join(unknown)}: not a group of this bundle (its groups: "
                              f"{', '.join(groups)}; or auto, or all)")
        return [name for name in groups if name not in asked]
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    picked = [videos[i] for i in sorted(rng.permutation(len(videos))[:AUXILIARY_CLIPS // 2])]
    clips, labels, _, _ = load_clips([(s.path, s.label) for s in picked], prep, max_clips_per_video=2,
                                     progress=not args.no_progress, description="auxiliary outliers")
    normalize = Normalize.from_preprocessing(prep)
    order = rng.permutation(len(clips))  # chunks mix the classes, so that splices find partners
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for start in range(0, len(clips), AUXILIARY_CHUNK):
        index = order[start:start + AUXILIARY_CHUNK]
        outliers = auxiliary_outliers(from_uint8(clips[index], model_device(model)), labels[index], model, normalize,
                                      classes=len(bundle.class_names), seed=args.seed + start,
                                      batch_size=args.batch_size)
        for kind, pixels in outliers.items():
            features = extract_clip_features(model, prep, to_uint8(pixels), bundle.layers,  # on the 8-bit grid
                                             batch_size=args.batch_size, pool_factor=args.pool_factor,
                                             evidence=evidence)
            loglik = bundle.loglik(features.layers, evidence=features.evidence)
            parts.setdefault(kind, []).append(bundle.calibration.group_scores(loglik))
    scores = {kind: {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
              for kind, chunks in parts.items()}
    clean = bundle.calibration.group_scores(bundle.loglik(calibration.layers, evidence=calibration.evidence))
    choice = choose_fused_groups(clean, scores)
    bundle.settings["fusion"] = {**choice.as_dict(), "auxiliary_clips": len(clips)}
    print(f"fused groups chosen on {len(clips)} calibration clips' auxiliary outliers in "
          f"{time.perf_counter() - started:.0f} s: AUROC per kind " + ", ".join(
              f"{kind} {choice.before[kind]:.3f} -> {choice.after[kind]:.3f}" for kind in choice.before))
    return choice.dropped


def calibration_videos_for(args: argparse.Namespace, dataset: UCF101) -> tuple[list, list]:
    """``(density videos, calibration videos)``: all training videos and ``--calibration-data``, or a group split.

    Calibration clips the model was trained on look more typical than new clips, so the false-alarm rate on new
    clips runs above the requested one; a group split can only avoid the densities' own overfitting, hence the
    warning.
    """
    if args.calibration_data:
        subsets = [UCF101(args.calibration_data, split=args.split, subset=name, missing="skip")
                   for name in ("train", "test")]
        if list(subsets[0].classes) != list(dataset.classes):
            raise DatasetError(f"{args.calibration_data}: classes {subsets[0].classes} differ from the training data's")
        samples = list({s.path: s for s in subsets[0].samples + subsets[1].samples}.values())
        training = {Path(s.path).resolve() for s in dataset.samples}
        if any(Path(s.path).resolve() in training for s in samples):
            raise DatasetError(f"{args.calibration_data}: calibration videos overlap the training videos")
        return list(dataset.samples), samples
    print(f"note: calibrating on {args.calibration_fraction:.0%} of the training groups, which the model was "
          "trained on: expect more false alarms than requested on new clips (use --calibration-data)")
    return split_calibration(dataset.samples, args.calibration_fraction, args.seed)


def _regularisation_summary(densities: dict) -> str:
    """One line: the cross-validated shrinkage per density, and any covariance that needed more help."""
    shrinkage = [f"{key} {model.shrinkage_:g}" for key, model in densities.items() if hasattr(model, "shrinkage_")]
    extra = sorted({f"{key}: {record.label}" for key, model in densities.items() for record in model.fit_report_
                    if record.jitter > 0 or record.shrinkage != getattr(model, "shrinkage_", 0.0)})
    lines = ["  shrinkage toward the pooled covariance: " + ", ".join(shrinkage)] if shrinkage else []
    lines += ["  further regularised: " + "; ".join(extra)] if extra else []
    return "\n".join(lines)
