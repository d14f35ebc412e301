"""Test-split evaluation exactly as inference will see clips: the clip grid of ``ClipSplitter`` and ``preprocess``.

Clip accuracy scores every clip on its own; video accuracy averages the softmax of a video's clips and takes the
argmax, the usual video-level protocol for clip classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.cache import ClipCache
from pipeline.training.config import TrainConfig
from pipeline.video import ClipSplitter, preprocess


@dataclass(frozen=True)
class Evaluation:
    """Accuracies, mean cross-entropy and the clip-level confusion matrix (rows: true class, columns: predicted)."""

    clip_accuracy: float
    video_accuracy: float
    loss: float
    num_clips: int
    num_videos: int
    confusion: np.ndarray

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(axis=1)
        return [float(self.confusion[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(totals))]


def eval_clips(frames: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """All grid clips of one cached video, preprocessed for the model: (K, 3, clip_len, crop, crop) float32."""
    plan = ClipSplitter(config.clip_len, config.eval_stride, config.frame_step).plan(frames.shape[0])
    chosen = frames[torch.from_numpy(np.stack(plan))]
    return preprocess(chosen, short_side=config.short_side, crop=config.crop, mean=config.mean, std=config.std,
                      fit=config.fit)


@torch.no_grad()
def evaluate(model: nn.Module, cache: ClipCache, config: TrainConfig, num_classes: int) -> Evaluation:
    """Evaluate ``model`` (switched to eval mode, restored afterwards) on every grid clip of every cached video."""
    was_training = model.training
    model.eval()
    logits, owners = [], []
    pending: list[torch.Tensor] = []
    pending_owners: list[int] = []

    device = next(model.parameters()).device

    def flush() -> None:
        if pending:
            logits.append(model(torch.cat(pending).to(device)).to("cpu", torch.float64))
            owners.extend(pending_owners)
            pending.clear()
            pending_owners.clear()

    for video, frames in enumerate(cache.frames):
        clips = eval_clips(frames, config)
        if sum(item.shape[0] for item in pending) + clips.shape[0] > config.eval_batch_size:
            flush()
        pending.append(clips)
        pending_owners.extend([video] * clips.shape[0])
    flush()
    model.train(was_training)

    scores = torch.cat(logits)
    video_of_clip = torch.tensor(owners, dtype=torch.int64)
    targets = cache.labels[video_of_clip]
    predictions = scores.argmax(dim=1)
    probabilities = scores.softmax(dim=1)
    video_probabilities = torch.zeros(len(cache), num_classes, dtype=torch.float64).index_add_(
        0, video_of_clip, probabilities)
    video_predictions = video_probabilities.argmax(dim=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets.numpy(), predictions.numpy()), 1)
    return Evaluation(
        clip_accuracy=float((predictions == targets).double().mean()),
        video_accuracy=float((video_predictions == cache.labels).double().mean()),
        loss=float(F.cross_entropy(scores, targets)),
        num_clips=int(scores.shape[0]),
        num_videos=len(cache),
        confusion=confusion,
    )
