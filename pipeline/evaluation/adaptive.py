"""Adaptive attacks in ``clipwatch evaluate``: one attacked set per (attack, λ), and the summary of the sweep.

The attacks (:mod:`pipeline.attacks.adaptive`) minimise ``attack_objective(f(x'), y) - λ · fused(x')``: they fool
the classifier while pushing the bundle's fused score up. Each set is scored like every other set (densities,
fused score, softmax, zoo rows), then summarised per λ: attack success, accuracy, the fraction flagged at the
calibrated false-alarm rate and every row's AUROC. The attacks optimise in float; clips are rounded to 8 bits
afterwards (PGD: the nearest 8-bit values inside the ε-ball), so the summary gives the fused score the attacker
reached in float next to the stored clips' one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import metrics
from pipeline.attacks import (
    FramingAttack,
    Normalize,
    framing_adaptive,
    framing_adaptive_universal,
    pgd_adaptive,
    scaled_frame_width,
    to_uint8,
)
from pipeline.attacks.common import project_to_grid
from pipeline.detect import BundleScores, ClipFeatures, Detector
from pipeline.detect.calibration import NORMAL
from pipeline.detect.torch_scoring import TorchBundleScorer

log = logging.getLogger(__name__)

ADAPTIVE_ATTACKS = ("pgd_adaptive", "framing_adaptive", "framing_adaptive_universal")
"""PGD, a white-box frame per clip (the paper's setting) and one universal frame, each knowing the detector."""
DEFAULT_LAMBDAS = (0.0, 0.1, 1.0, 10.0)
OBJECTIVE = "minimise -CE(f(x'), y) - lambda * fused(x') (fused in calibration standard deviations)"
ROUNDING = ("attacks optimise in float and clips are rounded to uint8 afterwards (PGD: nearest 8-bit values "
            "inside the eps-ball; frames are rounded in the forward pass, straight-through gradient); the rounding "
            "is not differentiable: fused_median_float is what the attacker reached, fused_median the stored clips'")


@dataclass
class AdaptiveSet:
    """One attacked set: stored uint8 clips ``(N, T, H, W, C)``, and the float clips' fused scores and predictions."""

    attack: str
    lam: float
    frames: np.ndarray
    fused_float: np.ndarray
    predicted_float: np.ndarray
    seconds: float


def set_name(attack: str, lam: float) -> str:
    """How results name the set of ``attack`` at ``lam``: ``pgd_adaptive@0.3``."""
    return f"{attack}@{lam:g}"


def adaptive_sets(settings, detector: Detector, clips01: torch.Tensor, labels: torch.Tensor, device: torch.device,
                  training_clips: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> dict[str, AdaptiveSet]:
    """Every adaptive attack of ``settings.attacks`` at every ``settings.lambdas`` on the CPU clips ``clips01``
    (pixels), run on ``device`` in batches; ``training_clips()`` gives the universal frame's training set."""
    names = [a for a in settings.attacks if a in ADAPTIVE_ATTACKS]
    if not names:
        return {}
    prep = detector.manifest.preprocessing
    normalize = Normalize.from_preprocessing(prep)
    attack = FramingAttack(width=settings.frame_width or scaled_frame_width(prep.crop), steps=settings.framing_steps,
                           lr=settings.framing_lr, seed=settings.seed)
    fused_keys = detector.bundle.calibration.fused_keys
    out: dict[str, AdaptiveSet] = {}
    train = None
    with TorchBundleScorer(detector.bundle, detector.model, normalize, keys=fused_keys,
                           heatmap=detector.heatmap) as scorer:
        for name in names:
            for lam in settings.lambdas:
                started = time.perf_counter()
                if name == "framing_adaptive_universal":
                    train = train or tuple(t.to(device) for t in training_clips())
                    frame = framing_adaptive_universal(scorer, *train, lam=lam, attack=attack,
                                                       epochs=settings.framing_epochs, progress=settings.progress)
                    run = lambda x, y, frame=frame: frame.apply(x)  # noqa: E731
                elif name == "framing_adaptive":
                    run = lambda x, y, lam=lam: framing_adaptive(  # noqa: E731
                        scorer, x, y, lam=lam, attack=attack, loss=settings.attack_loss, kappa=settings.kappa)
                else:
                    run = lambda x, y, lam=lam: pgd_adaptive(  # noqa: E731
                        scorer, x, y, lam=lam, eps=settings.pgd_eps, step_size=settings.pgd_step_size,
                        steps=settings.pgd_steps, seed=settings.seed, quantize=False, loss=settings.attack_loss,
                        kappa=settings.kappa)
                out[set_name(name, lam)] = _attack_in_batches(run, scorer, clips01, labels, settings, device, name,
                                                              lam, started)
                log.info("%s: %.0f s", set_name(name, lam), out[set_name(name, lam)].seconds)
    return out


def _attack_in_batches(run, scorer: TorchBundleScorer, clips01: torch.Tensor, labels: torch.Tensor, settings,
                       device: torch.device, name: str, lam: float, started: float) -> AdaptiveSet:
    """Attack batch by batch, score the float result (no graph), round to 8 bits; clips stay on the CPU."""
    stored, fused, predicted = [], [], []
    size = settings.batch_size
    for i in range(0, len(clips01), size):
        clean, targets = clips01[i:i + size].to(device), labels[i:i + size].to(device)
        adversarial = run(clean, targets)
        with torch.no_grad():
            scores = scorer(adversarial)
        fused.append(scores.fused.cpu().numpy())
        predicted.append(scores.logits.argmax(1).cpu().numpy())
        if name == "pgd_adaptive":
            adversarial = project_to_grid(adversarial, clean, settings.pgd_eps)
        stored.append(to_uint8(adversarial.cpu()))
    return AdaptiveSet(name, float(lam), np.concatenate(stored), np.concatenate(fused), np.concatenate(predicted),
                       time.perf_counter() - started)


def adaptive_block(attacked: dict[str, AdaptiveSet], clean: ClipFeatures, sets: dict[str, ClipFeatures],
                   set_scores: dict[str, BundleScores], detection: list[dict], settings, alpha: float) -> dict:
    """``results["adaptive"]``: per (attack, λ), attack success, accuracy, flagged at ``alpha``, evasion (success and
    not flagged, the attacker's real goal) and every AUROC; ``fused_auroc_succeeded`` is the fused score's over the
    clips the attack fooled only (classified correctly before, wrongly after), since clips it failed on and left
    looking typical are no threat."""
    correct = clean.logits.argmax(1) == clean.labels
    rows = []
    for name, attacked_set in attacked.items():
        features = sets[name]
        predicted = features.logits.argmax(1)
        fooled = predicted != clean.labels
        flagged = np.array(set_scores[name].verdicts) != NORMAL
        auroc = {f"{r['layer']}/{r['density']}": r["auroc"] for r in detection if r["ood_set"] == name}
        succeeded = fooled & correct
        rows.append({
            "attack": attacked_set.attack, "lambda": attacked_set.lam, "set": name, "clips": len(features),
            "accuracy": float(np.mean(predicted == clean.labels)),
            "attack_success": float(np.mean(fooled[correct])) if correct.any() else None,
            "flagged": float(np.mean(flagged)),
            "evaded": float(np.mean(fooled[correct] & ~flagged[correct])) if correct.any() else None,
            "fused_auroc": auroc.get("all/fused"),
            "fused_auroc_succeeded": metrics.auroc(set_scores["clean"].fused, set_scores[name].fused[succeeded])
            if succeeded.any() else None,
            "fused_median": float(np.median(set_scores[name].fused)),
            "fused_median_float": float(np.median(attacked_set.fused_float)),
            "accuracy_float": float(np.mean(attacked_set.predicted_float == clean.labels)),
            "seconds": round(attacked_set.seconds, 1),
            "auroc": auroc,
        })
    objective = OBJECTIVE if settings.attack_loss == "ce" else \
        f"minimise max(margin(f(x'), y), -{settings.kappa:g}) - lambda * fused(x') (Carlini & Wagner's margin)"
    return {"objective": objective, "rounding": ROUNDING, "lambdas": [float(lam) for lam in settings.lambdas],
            "alpha": alpha, "clean_correct": int(correct.sum()),
            "clean_fused_median": float(np.median(set_scores["clean"].fused)),
            "settings": {"pgd_eps": settings.pgd_eps, "pgd_step_size": settings.pgd_step_size,
                         "pgd_steps": settings.pgd_steps, "framing_steps": settings.framing_steps,
                         "framing_epochs": settings.framing_epochs, "framing_lr": settings.framing_lr},
            "rows": rows}
