"""Model selection on a validation split carved from the training list: which videos, and the best epoch so far.

Whole UCF101 groups (an actor or scene) are held out, so no clip of a validation group was trained on, and the
test split stays untouched until the end. The best epoch's weights are kept in ``checkpoints/best.safetensors``
(so a resumed run still ends with them); training stops once `patience` validations in a row did not beat it.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.data import VideoSample as Sample
from pipeline.fileio import atomic_write
from pipeline.training.checkpoint import CHECKPOINT_DIR

log = logging.getLogger(__name__)

BEST_FILE = "best.safetensors"


def validation_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, validation), stratified by class: about `fraction` of each class's groups, drawn with `seed`. A class
    with fewer than three groups gives every k-th video instead; a class with one video keeps it for training
    (said in the log), so every class keeps training videos."""
    if fraction <= 0:
        return list(samples), []
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    held: set[Path] = set()
    for label in sorted(by_class):
        videos = by_class[label]
        groups = sorted({sample.group for sample in videos})
        if len(groups) >= 3:
            rng.shuffle(groups)
            chosen_groups = set(groups[:max(1, round(fraction * len(groups)))])
            held.update(sample.path for sample in videos if sample.group in chosen_groups)
        elif len(videos) >= 2:
            step = max(2, round(1 / fraction))
            held.update(sample.path for sample in videos[step - 1::step] or videos[-1:])
        else:
            log.warning("validation: class %r has one training video; none of it is held out", videos[0].class_name)
    kept = [sample for sample in samples if sample.path not in held]
    chosen = [sample for sample in samples if sample.path in held]
    if not chosen:
        log.warning("validation: no video could be held out (%d training videos): the last epoch is kept", len(samples))
    return kept, chosen


class Best:
    """The best validation clip accuracy so far, its epoch, and its weights on disk."""

    def __init__(self, out: Path, model: nn.Module):
        self.path = out / CHECKPOINT_DIR / BEST_FILE
        self.model = model
        self.epoch: int | None = None
        self.score = -math.inf

    def offer(self, epoch: int, score: float) -> None:
        """Keep the model's weights if `score` is at least the best so far: of tied epochs the later one is kept, as
        the learning rate has decayed further (a small validation split ties often)."""
        if score >= self.score:
            self.epoch, self.score = epoch, score
            state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.model.state_dict().items()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda tmp: save_file(state, tmp, metadata={"epoch": str(epoch),
                                                                                  "score": repr(score)}))

    def exhausted(self, history: Sequence[dict[str, Any]], patience: int | None) -> bool:
        """Whether the last `patience` validations (from `history`, so resumed runs count) all scored below the best
        (a tie with it counts as the best, as in :meth:`offer`)."""
        scores = [row["val_clip_accuracy"] for row in history if row.get("val_clip_accuracy") is not None]
        if scores and self.epoch is None:  # resumed: the best so far is in the history
            best = _last_best(scores)
            self.score = scores[best]
            self.epoch = [row["epoch"] for row in history if row.get("val_clip_accuracy") is not None][best]
        if patience is None or not scores:
            return False
        return len(scores) - 1 - _last_best(scores) >= patience

    def restore(self) -> None:
        """Load the best epoch's weights back into the model (when there was a validation)."""
        if self.epoch is not None and self.path.is_file():
            with safe_open(self.path, "pt") as handle:
                saved = (handle.metadata() or {}).get("epoch")
            if saved != str(self.epoch):  # e.g. a crash between writing it and the checkpoint, then a resume
                log.warning("%s holds epoch %s, but the history's best is epoch %s: the last epoch's weights are "
                            "kept", self.path, saved, self.epoch)
                return
            device = next(self.model.parameters()).device
            self.model.load_state_dict({name: tensor.to(device) for name, tensor in load_file(self.path).items()})


def _last_best(scores: Sequence[float]) -> int:
    """Index of the last occurrence of the highest score."""
    return max(range(len(scores)), key=lambda i: (scores[i], i))
