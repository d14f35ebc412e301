"""Which groups the fused score takes the minimum over, chosen on auxiliary outliers that are not test sets.

The fused score is the lowest of the bundle's group scores (:mod:`pipeline.detect.calibration`), so a clip is as
unusual as its most unusual view. A group that finds some kind of outlier *more* typical than clean clips (early
layers rate a novel motion, a covered lens or a shuffled clip as ordinary or better) only adds the noise of its
clean tail to that minimum and hides what the other groups see. Whether a group earns its place is measured on
outliers made from the calibration clips themselves, so no test set, novel class or evaluated attack can leak in:

- ``shuffle``: a clip's frames in a random order; ``splice``: the halves of two clips of different classes (the
  open-set training's outliers, :mod:`pipeline.training.openset`);
- ``corrupt``: one random rectangle changed (the OOD heatmap's generic corruptions,
  :func:`pipeline.detect.zoo.heatmap.corrupt`);
- ``gradient``: one targeted gradient-sign step of 2/255 toward a random wrong class (an untargeted FGSM of 8/255,
  as `clipwatch evaluate` runs, is of the same family: report it as a seen kind).

:func:`choose_fused_groups` runs a backward elimination over the groups that rate at least one kind as more typical
than clean clips (AUROC below 0.5 on their own; a group that is merely weaker than the others on these kinds may be
the one that sees another kind, such as a painted frame, and stays): it drops the one whose removal raises the mean
AUROC over the outlier kinds most, provided no kind loses more than ``tolerance``, and stops when no removal
qualifies; at least one group stays. Losses are measured against the AUROC of all groups, so they cannot add up over
several steps, and with fewer than :data:`MIN_CLIPS` clean clips per kind nothing is dropped (the AUROC of a few
dozen clips is noise). A dropped group is still calibrated and still labels a flagged clip (low-level layers that
find the pixels improbable make it ``adversarial``).

The choice is made on the calibration clips, whose fused scores then set the p-values: strictly, the conformal
guarantee holds for a rule fixed in advance, and a choice among at most ``2^groups`` rules can raise the false
alarms a little above the rate asked for (measured on held-out clips in ``pipeline/assets/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline.attacks.gradient import fgsm
from pipeline.detect.calibration import CalibrationError
from pipeline.detect.zoo.heatmap import corrupt
from pipeline.metrics import auroc
from pipeline.training.openset import shuffle_frames, splice

AUXILIARY_KINDS = ("shuffle", "splice", "corrupt", "gradient")
GRADIENT_STEP = 2 / 255
TOLERANCE = 0.005
MIN_CLIPS = 100
"""Fewer clean clips than this (or outliers of a kind): every group stays fused."""


def auxiliary_outliers(pixels: torch.Tensor, labels: np.ndarray, model: nn.Module,
                       normalize: Callable[[torch.Tensor], torch.Tensor], *, classes: int, seed: int = 0,
                       batch_size: int = 32) -> dict[str, torch.Tensor]:
    """One outlier of each kind (:data:`AUXILIARY_KINDS`) per pixel clip ``(N, C, T, H, W)`` in ``[0, 1]``, on
    the clips' device; the input is not modified. Splices pair clips of different labels (a clip with no such
    partner is spliced with itself reversed in time), the gradient step targets a random other class (no such kind
for a one-class model)."""
    labels = np.asarray(labels)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    shuffled = torch.stack([shuffle_frames(clip, generator) for clip in pixels])
    spliced = []
    for clip, label in zip(pixels, labels, strict=True):
        others = np.flatnonzero(labels != label)
        spliced.append(splice(clip, pixels[int(rng.choice(others))] if others.size else clip.flip(1)))
    chunks = range(0, len(pixels), batch_size)
    corrupted = torch.cat([corrupt(pixels[i:i + batch_size].cpu(), generator).to(pixels.device) for i in chunks])
    made = {"shuffle": shuffled, "splice": torch.stack(spliced), "corrupt": corrupted}
    if classes >= 2:  # a step toward another class; a one-class model has none
        targets = torch.as_tensor((labels + rng.integers(1, classes, len(labels))) % classes, device=pixels.device)
        made["gradient"] = torch.cat([fgsm(model, pixels[i:i + batch_size], targets[i:i + batch_size], normalize,
                                           eps=GRADIENT_STEP, targeted=True) for i in chunks])
    return made


@dataclass
class FusionChoice:
    """The groups kept in the fused minimum, those dropped, and the AUROC per outlier kind before and after."""

    kept: list[str]
    dropped: list[str]
    before: dict[str, float]
    after: dict[str, float]
    steps: list[str] = field(default_factory=list)
    clips: dict[str, int] = field(default_factory=dict)
    """Scored clips: ``clean`` and one entry per outlier kind."""

    def as_dict(self) -> dict:
        return {"rule": "backward elimination on auxiliary outliers", "tolerance": TOLERANCE, "kept": self.kept,
                "dropped": self.dropped, "auroc_before": self.before, "auroc_after": self.after, "steps": self.steps,
                "clips": self.clips}


def choose_fused_groups(clean: Mapping[str, np.ndarray], outliers: Mapping[str, Mapping[str, np.ndarray]], *,
                        tolerance: float = TOLERANCE) -> FusionChoice:
    """Backward elimination of groups (see the module docstring). ``clean`` maps each group to its scores on
    in-distribution calibration clips (higher = more in-distribution), ``outliers`` each outlier kind to the same
    groups' scores on its clips."""
    names = list(clean)
    if not names or not outliers or any(list(scores) != names for scores in outliers.values()):
        raise CalibrationError(f"choose_fused_groups: every outlier kind needs the scores of the groups {names}")
    clean_matrix = np.stack([np.asarray(clean[name], dtype=np.float64) for name in names], axis=1)
    kinds = {kind: np.stack([np.asarray(scores[name], dtype=np.float64) for name in names], axis=1)
             for kind, scores in outliers.items()}

    def aurocs(kept: list[int]) -> np.ndarray:
        fused = clean_matrix[:, kept].min(axis=1)
        return np.array([auroc(fused, matrix[:, kept].min(axis=1)) for matrix in kinds.values()])

    kept = list(range(len(names)))
    current = before = aurocs(kept)
    clips = {"clean": len(clean_matrix), **{kind: len(matrix) for kind, matrix in kinds.items()}}
    enough = min(clips.values()) >= MIN_CLIPS
    misleading = [group for group in kept if enough and aurocs([group]).min() < 0.5]
    steps = [] if enough else [f"nothing dropped: {min(clips.values())} clips of a kind, fewer than {MIN_CLIPS}"]
    while len(kept) > 1:
        trials = {group: aurocs([g for g in kept if g != group]) for group in kept if group in misleading}
        fair = {group: values for group, values in trials.items() if np.all(values >= before - tolerance)}
        best = max(fair, key=lambda group: fair[group].mean(), default=None)
        if best is None or fair[best].mean() <= current.mean():
            break
        steps.append(f"without {names[best]}: mean AUROC {current.mean():.3f} -> {fair[best].mean():.3f}")
        kept.remove(best)
        current = fair[best]
    rounded = {kind: (round(float(b), 4), round(float(a), 4)) for kind, b, a in zip(kinds, before, current, strict=True)}
    return FusionChoice([names[g] for g in kept], [name for g, name in enumerate(names) if g not in kept],
                        {kind: b for kind, (b, _) in rounded.items()}, {kind: a for kind, (_, a) in rounded.items()},
                        steps, clips)
