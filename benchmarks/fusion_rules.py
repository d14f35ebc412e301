"""Which groups should the fused score take the minimum over? Each rule measured on auxiliary outliers and test sets.

`clipwatch fit --fused-groups auto` chooses the groups on auxiliary outliers made from the calibration clips
(`pipeline.detect.fusion`: shuffled, spliced, locally corrupted, one targeted gradient step of 2/255). This script
makes the same outliers from ``--calibration-data`` and scores them, and the test sets of ``--data`` (clean test
clips, its novel classes, the shipped universal frame, FGSM 8/255 and the five tamperings), with every rule: the
minimum over all groups, each group alone, the minimum without each group, and the rule the elimination chooses
(marked); then other combinations of the chosen groups (Fisher's and Simes' of their p-values, the mean score).
The test sets play no part in the choice; FGSM is of the gradient step's family, the rest are unseen kinds. The
bundle's own choice is ignored: every group is scored.

    .venv/bin/python benchmarks/fusion_rules.py --calibration-data CAL --data TEST [--bundle B] [--save-scores NPZ]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPOSITORY)  # run as a script, this file's folder would shadow the `pipeline` package

import numpy as np
import torch

from pipeline.attacks import AdversarialFrame, Normalize, fgsm, from_uint8, to_uint8
from pipeline.data import labelled_videos
from pipeline.data.tamper import TAMPERING, tamper
from pipeline.demo.run import DEFAULT_BUNDLE
from pipeline.detect import Detector, load_clips
from pipeline.detect.fusion import auxiliary_outliers, choose_fused_groups
from pipeline.metrics import auroc

FRAME = REPOSITORY / "pipeline" / "assets" / "frames" / "default.safetensors"


def test_sets(root: Path, detector: Detector, seed: int) -> dict[str, np.ndarray]:
    prep = detector.manifest.preprocessing
    clips, labels, _, _ = load_clips(labelled_videos(root, 1, ("test",)), prep, progress=False)
    sets = {"clean": clips}
    if (root / "novel").is_dir():
        sets["novel"] = load_clips(labelled_videos(root / "novel"), prep, progress=False)[0]
    pixels = from_uint8(clips)
    sets["framing"] = to_uint8(AdversarialFrame.load(FRAME).apply(pixels))
    normalize = Normalize.from_preprocessing(prep)
    targets = torch.as_tensor(labels)
    sets["fgsm"] = to_uint8(torch.cat([fgsm(detector.model, pixels[i:i + 32], targets[i:i + 32], normalize,
                                            eps=8 / 255) for i in range(0, len(pixels), 32)]))
    sets.update({f"tamper_{kind}": tamper(clips, kind, seed=seed) for kind in TAMPERING})
    return sets


def group_scores(detector: Detector, clips: np.ndarray) -> np.ndarray:
    """``(N, groups)`` standardised group scores, in the calibration's group order."""
    features = detector.features(clips, batch_size=32)
    loglik = detector.bundle.loglik(features.layers, evidence=features.evidence)
    groups = detector.bundle.calibration.group_scores(loglik)
    return np.stack(list(groups.values()), axis=1)


COMBINATIONS = ("fisher", "simes", "mean")


def combined_score(calibration: np.ndarray, scores: np.ndarray, how: str) -> np.ndarray:
    """Another way to fuse the groups' scores ``(N, G)`` than their minimum (higher = more in-distribution): each
    group's conformal p-value against its calibration scores ``(M, G)``, combined by Fisher (the sum of their logs)
    or Simes (``min_i G p_(i) / i``), or the mean of the standardised scores."""
    if how == "mean":
        return scores.mean(axis=1)
    ranked = np.sort(calibration, axis=0)
    p = np.stack([(1.0 + np.searchsorted(ranked[:, g], scores[:, g], side="right")) / (len(ranked) + 1.0)
                  for g in range(scores.shape[1])], axis=1)
    if how == "fisher":
        return np.log(p).sum(axis=1)
    ordered = np.sort(p, axis=1)
    return np.log((ordered * p.shape[1] / np.arange(1, p.shape[1] + 1)).min(axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--calibration-data", type=Path, required=True,
                        help="in-distribution videos the model never trained on (e.g. the bundle's calibration set)")
    parser.add_argument("--data", type=Path, required=True, help="test dataset (UCF101 layout, novel/ optional)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-scores", type=Path, metavar="NPZ",
                        help="also write every set's group scores (and the group names) to this .npz, to try rules "
                             "offline")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    detector = Detector.load(args.bundle)
    names = list(detector.bundle.calibration.groups)
    clips, labels, _, _ = load_clips(labelled_videos(args.calibration_data), detector.manifest.preprocessing, progress=False)
    calibration = group_scores(detector, clips)
    normalize = Normalize.from_preprocessing(detector.manifest.preprocessing)
    made = auxiliary_outliers(from_uint8(clips), labels, detector.model, normalize,
                              classes=len(detector.class_names), seed=args.seed)
    auxiliary = {name: group_scores(detector, to_uint8(value)) for name, value in made.items()}
    tests = {name: group_scores(detector, value) for name, value in test_sets(args.data, detector, args.seed).items()}
    choice = choose_fused_groups(dict(zip(names, calibration.T, strict=True)),
                                 {kind: dict(zip(names, scores.T, strict=True)) for kind, scores in auxiliary.items()})
    kept = [names.index(name) for name in choice.kept]
    if args.save_scores:
        np.savez(args.save_scores, groups=np.array(names), kept=np.array(kept), calibration=calibration,
                 **{f"auxiliary_{kind}": scores for kind, scores in auxiliary.items()},
                 **{f"test_{name}": scores for name, scores in tests.items()})

    rules = {"min over all groups": list(range(len(names)))}
    rules.update({f"{name} alone": [i] for i, name in enumerate(names)})
    rules.update({f"min without {name}": [j for j in range(len(names)) if j != i] for i, name in enumerate(names)})
    chosen = next((rule for rule, groups in rules.items() if groups == kept), None)
    if chosen is None:
        chosen = "min over " + ", ".join(names[i] for i in kept)
        rules[chosen] = kept
    combined = {f"{how} over {', '.join(names[i] for i in kept)}": (how, kept) for how in COMBINATIONS}
    columns = [*auxiliary, *(name for name in tests if name != "clean")]
    print(f"bundle {args.bundle}; groups {', '.join(names)}; {len(clips)} calibration clips, "
          f"{len(tests['clean'])} clean test clips")
    print("AUROC; auxiliary outliers (made from the calibration clips, used for the choice) | test sets (not used)")
    print("| rule | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for rule, groups in rules.items():
        row = [auroc(calibration[:, groups].min(axis=1), scores[:, groups].min(axis=1)) for scores in auxiliary.values()]
        row += [auroc(tests["clean"][:, groups].min(axis=1), tests[name][:, groups].min(axis=1))
                for name in columns[len(auxiliary):]]
        mark = " (chosen)" if rule == chosen else ""
        print(f"| {rule}{mark} | " + " | ".join(f"{value:.3f}" for value in row) + " |")
    for rule, (how, groups) in combined.items():
        def combine(scores, how=how, groups=groups):
            return combined_score(calibration[:, groups], scores[:, groups], how)
        row = [auroc(combine(calibration), combine(scores)) for scores in auxiliary.values()]
        row += [auroc(combine(tests["clean"]), combine(tests[name])) for name in columns[len(auxiliary):]]
        print(f"| {rule} | " + " | ".join(f"{value:.3f}" for value in row) + " |")
    print("\n".join(choice.steps) or "no group dropped")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
