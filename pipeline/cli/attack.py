"""``clipwatch attack``: write attacked clips of a dataset split losslessly (uint8 .npz + JSON).

The adaptive attacks (``pgd-adaptive``, ``framing-adaptive``, ``framing-adaptive-universal``) know the detector:
they take ``--bundle`` (its model is the one attacked) and ``--lambda``, the weight of the bundle's fused score in
their loss (:mod:`pipeline.attacks.adaptive`); ``--lambda 0`` is the plain attack.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.attacks import (
    FramingAttack,
    Normalize,
    fgsm,
    framing_adaptive,
    framing_adaptive_universal,
    from_uint8,
    pgd,
    pgd_adaptive,
    save_attacked_clips,
    scaled_frame_width,
    to_uint8,
)
from pipeline.cli import COMMAND_HELP, add_device_argument, command_device, in_range
from pipeline.data import UCF101
from pipeline.detect import Detector, load_clips
from pipeline.detect.torch_scoring import TorchBundleScorer
from pipeline.errors import ClipwatchError
from pipeline.models import load_model
from pipeline.models.precision import prepare_for_inference

ADAPTIVE_NAMES = ("pgd-adaptive", "framing-adaptive", "framing-adaptive-universal")
ATTACK_NAMES = ("framing", "framing-universal", "fgsm", "pgd", *ADAPTIVE_NAMES)


def non_negative_float(text: str) -> float:
    """An argparse ``type`` for a finite number >= 0 (a λ)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("attack", help=COMMAND_HELP["attack"])
    parser.add_argument("--model", help="model to attack (white-box) or surrogate (black-box); default: 'default', "
                                        "or the bundle's model for the adaptive attacks")
    parser.add_argument("--data", required=True, type=Path, help="dataset root in the UCF101 layout")
    parser.add_argument("--out", required=True, type=Path, help="output .npz (a .json beside it holds metadata)")
    parser.add_argument("--attack", default="framing", choices=ATTACK_NAMES)
    parser.add_argument("--bundle", type=Path, help="detector bundle the adaptive attacks know (required by them)")
    parser.add_argument("--lambda", dest="lam", type=non_negative_float, default=1.0, metavar="λ",
                        help="adaptive attacks: weight of the bundle's fused score in the loss (>= 0, default 1)")
    parser.add_argument("--attack-loss", choices=("ce", "margin"), default="ce",
                        help="adaptive attacks: cross-entropy or Carlini & Wagner's margin (default %(default)s)")
    parser.add_argument("--kappa", type=non_negative_float, default=0.0,
                        help="margin loss: logits of misclassification beyond which only the detector term pushes")
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--subset", default="test", choices=("train", "test"))
    parser.add_argument("--frame-width", type=int, help="frame width in px (default: 4 at 112 px, scaled)")
    parser.add_argument("--steps", type=int, default=50, help="optimisation steps (framing) or PGD steps")
    parser.add_argument("--epochs", type=int, default=3, help="epochs for a universal frame")
    parser.add_argument("--eps", type=in_range(0, 1, high_inclusive=True), default=8 / 255, help="L-inf budget for FGSM/PGD in [0, 1] units")
    parser.add_argument("--step-size", type=in_range(0, 1, high_inclusive=True), default=2 / 255,
                        help="PGD step in [0, 1] units (default 2/255)")
    parser.add_argument("--save-frame", type=Path, help="with framing-universal: also save the learned frame here")
    parser.add_argument("--max-clips-per-video", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser, precision="fp32")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    adaptive = args.attack in ADAPTIVE_NAMES
    if adaptive and (args.bundle is None or args.model is not None):
        raise ClipwatchError(f"{args.attack} attacks the model of the detector it knows: give --bundle, not --model")
    if not adaptive and args.bundle is not None:
        raise ClipwatchError(f"--bundle is for the adaptive attacks ({', '.join(ADAPTIVE_NAMES)}), not {args.attack}")
    device = command_device(args)
    torch.manual_seed(args.seed)
    detector = None
    if adaptive:
        detector = Detector.load(args.bundle, device=device, precision=args.precision)
        model, manifest = detector.model, detector.manifest
    else:
        model, manifest = load_model(args.model or "default", map_location=device)
        model, _ = prepare_for_inference(model, args.precision, device=device)
    prep = manifest.preprocessing
    dataset = UCF101(args.data, split=args.split, subset=args.subset, missing="skip")
    clips, labels, _, skipped = load_clips([(s.path, s.label) for s in dataset.samples], prep,
                                               max_clips_per_video=args.max_clips_per_video,
                                               progress=not args.no_progress)
    clips01, targets = from_uint8(clips), torch.as_tensor(labels)
    normalize = Normalize.from_preprocessing(prep)
    width = args.frame_width or scaled_frame_width(prep.crop)
    params: dict = {"model": str(args.model or "default"), "seed": args.seed}
    if adaptive:
        params.update(model=detector.model_id, bundle=str(args.bundle), loss=args.attack_loss, kappa=args.kappa,
                      **{"lambda": args.lam})
        adversarial = _adaptive(args, detector, clips01, targets, normalize, width, params, device)
    elif args.attack.startswith("framing"):
        attack = FramingAttack(width=width, steps=args.steps, seed=args.seed)
        params.update(attack.params())
        if args.attack == "framing-universal":
            params["epochs"] = args.epochs
            frame = attack.fit_universal(model, clips01.to(device), targets.to(device), normalize,
                                         epochs=args.epochs, progress=not args.no_progress)
            if args.save_frame:
                print(f"universal frame saved to {frame.save(args.save_frame)}")
            adversarial = frame.apply(clips01)
        else:
            adversarial = _batched(lambda x, y: attack.attack_batch(model, x, y, normalize), clips01, targets,
                                   args.batch_size, device)
    elif args.attack == "fgsm":
        params["eps"] = args.eps
        adversarial = _batched(lambda x, y: fgsm(model, x, y, normalize, eps=args.eps), clips01, targets,
                               args.batch_size, device)
    else:
        params.update(eps=args.eps, steps=args.steps, step_size=args.step_size)
        adversarial = _batched(lambda x, y: pgd(model, x, y, normalize, eps=args.eps, steps=args.steps,
                                                step_size=args.step_size, seed=args.seed),
                               clips01, targets, args.batch_size, device)
    path = save_attacked_clips(args.out, to_uint8(adversarial), attack=args.attack, params=params,
                               labels=labels, source=str(args.data))
    with torch.inference_mode():
        predicted = torch.cat([model(normalize(adversarial[i : i + 32].to(device))).argmax(1).cpu()
                               for i in range(0, len(adversarial), 32)])
    accuracy = float((predicted == targets).float().mean())
    for bad, reason in skipped:
        print(f"skipped {bad}: {reason}")
    print(f"{len(clips)} clips attacked with {args.attack}: accuracy {accuracy:.3f}; written to {path}")
    return 0


def _adaptive(args: argparse.Namespace, detector: Detector, clips01: torch.Tensor, targets: torch.Tensor,
              normalize: Normalize, width: int, params: dict, device: torch.device) -> torch.Tensor:
    """The adaptive attacks: optimised in float against the classifier and the bundle's fused score, then rounded."""
    with TorchBundleScorer(detector.bundle, detector.model, normalize, keys=detector.bundle.calibration.fused_keys,
                           heatmap=detector.heatmap) as scorer:
        if args.attack == "pgd-adaptive":
            params.update(eps=args.eps, steps=args.steps, step_size=args.step_size)
            return _batched(lambda x, y: pgd_adaptive(scorer, x, y, lam=args.lam, eps=args.eps, steps=args.steps,
                                                      step_size=args.step_size, seed=args.seed,
                                                      loss=args.attack_loss, kappa=args.kappa),
                            clips01, targets, args.batch_size, device)
        attack = FramingAttack(width=width, steps=args.steps, seed=args.seed)
        params.update(attack.params())
        if args.attack == "framing-adaptive":
            return _batched(lambda x, y: framing_adaptive(scorer, x, y, lam=args.lam, attack=attack,
                                                          loss=args.attack_loss, kappa=args.kappa),
                            clips01, targets, args.batch_size, device)
        params["epochs"] = args.epochs
        frame = framing_adaptive_universal(scorer, clips01.to(device), targets.to(device), lam=args.lam,
                                           attack=attack, epochs=args.epochs, progress=not args.no_progress)
        if args.save_frame:
            print(f"universal frame saved to {frame.save(args.save_frame)}")
        return frame.apply(clips01)


def _batched(fn, clips01: torch.Tensor, labels: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """``fn`` on each batch moved to ``device``; the results come back to the CPU."""
    return torch.cat([fn(clips01[i : i + size].to(device), labels[i : i + size].to(device)).cpu()
                      for i in range(0, len(clips01), size)])
