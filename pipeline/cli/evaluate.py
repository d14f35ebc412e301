"""``clipwatch evaluate``: reproduce the paper's tables and figures for a bundle, its model and a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.cli import COMMAND_HELP, add_device_argument, command_device, in_range
from pipeline.cli.attack import non_negative_float
from pipeline.data.tamper import TAMPERING
from pipeline.detect.zoo import ZooError, parse_detectors
from pipeline.evaluation.adaptive import ADAPTIVE_ATTACKS, DEFAULT_LAMBDAS
from pipeline.evaluation.report import best_rows
from pipeline.evaluation.run import ATTACKS, EvaluationSettings, evaluate


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _detectors(text: str) -> tuple[str, ...]:
    try:
        return parse_detectors(text)
    except ZooError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help=COMMAND_HELP["evaluate"])
    parser.add_argument("--bundle", required=True, type=Path, help="detector bundle written by `clipwatch fit`")
    parser.add_argument("--data", required=True, type=Path, help="dataset root in the UCF101 layout")
    parser.add_argument("--out", required=True, type=Path, help="folder for results.json, results.md and PNGs")
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--novel", type=Path, help="novel-class dataset root (default: DATA/novel when present)")
    parser.add_argument("--surrogate", default="default-surrogate",
                        help="model for black-box framing (default: %(default)s; 'none' to skip)")
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=ATTACKS + ADAPTIVE_ATTACKS,
                        help="attacked sets (default: %(default)s); the adaptive ones, which know the detector and "
                             "run once per --lambdas value, only when named")
    parser.add_argument("--lambdas", nargs="+", type=non_negative_float, default=list(DEFAULT_LAMBDAS), metavar="λ",
                        help="weights of the fused score in the adaptive attacks' loss (default: %(default)s)")
    parser.add_argument("--pgd-eps", type=in_range(0, 1, high_inclusive=True), default=8 / 255,
                        help="pgd_adaptive L-inf budget in [0, 1] pixel units (default 8/255)")
    parser.add_argument("--pgd-step-size", type=in_range(0, 1, high_inclusive=True), default=2 / 255,
                        help="pgd_adaptive step in [0, 1] pixel units (default 2/255)")
    parser.add_argument("--pgd-steps", type=_positive_int, default=10, help="pgd_adaptive steps (default %(default)s)")
    parser.add_argument("--framing-steps", type=_positive_int, default=50,
                        help="Adam steps of framing_adaptive's per-clip frame (default %(default)s)")
    parser.add_argument("--attack-loss", choices=("ce", "margin"), default="ce",
                        help="the adaptive attacks' misclassification term: cross-entropy or Carlini & Wagner's "
                             "margin (default %(default)s)")
    parser.add_argument("--kappa", type=non_negative_float, default=0.0,
                        help="margin loss: logits of misclassification beyond which only the detector term pushes")
    parser.add_argument("--tamper", nargs="*", default=list(TAMPERING), choices=TAMPERING,
                        help="camera-tampering sets made from the test clips, reported as tamper_NAME (default: "
                             "%(default)s; none when given without names)")
    parser.add_argument("--ood", action="append", type=_named_path, default=[], metavar="NAME=FILE.npz",
                        help="extra OOD set: attacked clips written by `clipwatch attack` (repeatable)")
    parser.add_argument("--frame-width", type=int, help="adversarial frame width in px (default: 4 at 112 px, scaled)")
    parser.add_argument("--framing-epochs", type=int, default=3)
    parser.add_argument("--fgsm-eps", type=in_range(0, 1, high_inclusive=True), default=8 / 255, help="L-inf budget in [0, 1] pixel units")
    parser.add_argument("--detectors", type=_detectors, default="all", metavar="NAMES",
                        help="baselines fitted on the training split and compared with the bundle, comma-separated: "
                             "msp, max_logit, energy, odin, mahalanobis, knn, vim, gradnorm (default: all; 'none')")
    parser.add_argument("--max-clips-per-video", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = command_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = EvaluationSettings(
        bundle=args.bundle, data=args.data, out=args.out, split=args.split, novel=args.novel,
        surrogate=None if str(args.surrogate).lower() == "none" else args.surrogate, attacks=tuple(args.attacks),
        frame_width=args.frame_width, framing_epochs=args.framing_epochs, fgsm_eps=args.fgsm_eps,
        lambdas=tuple(dict.fromkeys(args.lambdas)), pgd_eps=args.pgd_eps, pgd_step_size=args.pgd_step_size,
        pgd_steps=args.pgd_steps, framing_steps=args.framing_steps, attack_loss=args.attack_loss, kappa=args.kappa,
        tamper=tuple(dict.fromkeys(args.tamper)), extra_ood=dict(args.ood), max_clips_per_video=args.max_clips_per_video, batch_size=args.batch_size,
        seed=args.seed, progress=not args.no_progress, device=str(device), detectors=args.detectors,
        precision=args.precision)
    results = evaluate(settings)
    print("accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in results["accuracy"].items()))
    for ood, slot in best_rows(results["detection"]).items():
        cells = ", ".join(f"{d} {row['auroc']:.3f}" for d, row in slot.items())
        matched = slot["fused"].get("class_matched_auroc") if "fused" in slot else None
        print(f"AUROC {ood}: {cells}" + ("" if matched is None else f"; fused, class-matched {matched:.3f}"))
    for row in results.get("adaptive", {}).get("rows", []):
        success, evaded = ("-" if row[k] is None else f"{row[k]:.3f}" for k in ("attack_success", "evaded"))
        print(f"{row['set']}: accuracy {row['accuracy']:.3f}, success {success}, flagged {row['flagged']:.3f}, "
              f"evaded {evaded}, fused AUROC {row['fused_auroc']:.3f}")
    print(f"false alarms {results['false_alarm']['measured']:.4f} (requested {results['false_alarm']['requested']}); "
          f"{results['seconds']:.0f} s; results in {args.out}")
    return 0
