"""Layer features of clips: decode, preprocess as the model's manifest says, one tapped forward pass per batch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.detect.evidence import Evidence
from pipeline.errors import ClipwatchError
from pipeline.models import FeatureTap
from pipeline.video import ClipSplitter, VideoError, iter_file_clips, preprocess
from pipeline.video.preprocess import resize_crop, resize_target

log = logging.getLogger(__name__)


@dataclass
class ClipFeatures:
    """Per-clip outputs of a tapped model: ``layers[name]`` is ``(N, D)`` float32, ``logits`` is ``(N, C)``;
    ``evidence[key]`` ``(N,)`` float64 holds what :mod:`pipeline.detect.evidence` computed in the same pass."""

    layers: dict[str, np.ndarray]
    logits: np.ndarray
    labels: np.ndarray
    videos: list[str] = field(default_factory=list)
    seqs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    skipped: list[tuple[str, str]] = field(default_factory=list)
    evidence: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def softmax(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits).double(), dim=1).numpy()

    def subset(self, index: np.ndarray) -> ClipFeatures:
        """The clips at ``index`` (a boolean mask or integer positions)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return ClipFeatures(
            {name: values[index] for name, values in self.layers.items()},
            self.logits[index],
            self.labels[index],
            [self.videos[i] for i in index] if self.videos else [],
            self.seqs[index] if self.seqs.size else self.seqs,
            evidence={key: values[index] for key, values in self.evidence.items()},
        )


def _fixed_size(shape: Sequence[int], preprocessing) -> tuple[int, int] | None:
    """Clips already at crop size are not resized (the decoder may have cropped them)."""
    crop = preprocessing.crop
    return (crop, crop) if tuple(shape[-3:-1]) == (crop, crop) else None


def model_input(frames: np.ndarray | torch.Tensor, preprocessing) -> torch.Tensor:
    """``(B, T, H, W, 3)`` uint8 clips to the model's normalised input; clips already at crop size are not resized."""
    frames = torch.as_tensor(frames)
    return preprocess(frames, preprocessing.short_side, preprocessing.crop, preprocessing.mean, preprocessing.std,
                      size=_fixed_size(frames.shape, preprocessing), fit=preprocessing.fit)


def model_input_problem(shape: Sequence[int], preprocessing) -> str | None:
    """Why a ``(T, H, W, C)`` clip cannot become model input (too large once resized), or None; allocates nothing."""
    length, height, width = shape[-4:-1]
    try:
        resize_target(length, height, width, preprocessing.short_side, _fixed_size(shape, preprocessing))
    except ValueError as error:
        return str(error)
    return None


def model_inputs(clips: Sequence[np.ndarray], preprocessing) -> torch.Tensor:
    """The model input of ``(T, H, W, 3)`` clips of any frame sizes, in order; equal shapes are preprocessed together.

    Streams and archive videos differ in resolution, so a batch of clips cannot be stacked as one array.
    """
    by_shape: dict[tuple, list[int]] = {}
    for index, clip in enumerate(clips):
        by_shape.setdefault(tuple(clip.shape), []).append(index)
    if len(by_shape) == 1:  # the usual batch: no second copy of the whole input
        return model_input(np.stack(clips), preprocessing)
    parts: list[torch.Tensor | None] = [None] * len(clips)
    for indices in by_shape.values():
        batch = model_input(np.stack([clips[i] for i in indices]), preprocessing)
        for row, index in enumerate(indices):
            parts[index] = batch[row]
    return torch.stack(parts)


def pixel_input(frames: np.ndarray | torch.Tensor, preprocessing) -> torch.Tensor:
    """``(B, T, H, W, 3)`` uint8 clips resized and cropped like :func:`model_input`, as ``(B, 3, T, S, S)`` in [0, 1].

    This is the space attacks perturb; ``pipeline.attacks.Normalize`` maps it to the model's input.
    """
    identity = type(preprocessing)(**{**preprocessing.model_dump(), "mean": (0.0,) * 3, "std": (1.0,) * 3})
    return model_input(frames, identity)


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model that holds no tensors."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def extract_from_tensors(
    model: nn.Module, inputs: Iterable[torch.Tensor], layers: Sequence[str], *, pool_factor: int = 4,
    evidence: Evidence | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Run normalised input batches through ``model`` with a tap; returns ``(layers, logits, evidence)``: float32
    features and logits, and the ``(N,)`` float64 scores of ``evidence`` (empty without it).

    Batches are moved to the model's device (:func:`model_device`); the outputs come back to the CPU.
    """
    model.eval()
    device = model_device(model)
    evidence = evidence or Evidence()
    per_layer: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    per_key: dict[str, list[np.ndarray]] = {key: [] for key in evidence.keys}
    logits_parts = []
    with FeatureTap(model, list(layers), pool_factor=pool_factor) as tap:
        for batch in inputs:
            logits, features, scores, _ = evidence.forward(model, tap, batch.to(device))
            logits_parts.append(logits.float().cpu().numpy())
            for name in layers:
                per_layer[name].append(features[name].float().cpu().numpy())
            for key in evidence.keys:
                per_key[key].append(scores[key].cpu().numpy())
    if not logits_parts:
        raise ClipwatchError("no clips to extract features from")
    return ({name: np.concatenate(parts) for name, parts in per_layer.items()}, np.concatenate(logits_parts),
            {key: np.concatenate(parts) for key, parts in per_key.items()})


def extract_clip_features(
    model: nn.Module, preprocessing, clips: np.ndarray, layers: Sequence[str], labels=None, *,
    batch_size: int = 16, pool_factor: int = 4, evidence: Evidence | None = None,
) -> ClipFeatures:
    """Features of in-memory uint8 clips ``(N, T, H, W, 3)`` (e.g. attacked clips read back from disk), with the
    ``evidence`` computed in the same pass."""
    inputs = (model_input(clips[i : i + batch_size], preprocessing) for i in range(0, len(clips), batch_size))
    feats, logits, found = extract_from_tensors(model, inputs, layers, pool_factor=pool_factor, evidence=evidence)
    labels = np.full(len(clips), -1) if labels is None else np.asarray(labels)
    return ClipFeatures(feats, logits, labels, seqs=np.arange(len(clips)), evidence=found)


def load_clips(
    videos: Sequence[tuple[str | Path, int]], preprocessing, *, max_clips_per_video: int | None = None,
    progress: bool = True, description: str = "clips",
) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode videos into uint8 clips at the model's resolution ``(N, T, S, S, 3)``, with labels and video paths.

    Clips are resized and cropped as the model expects and rounded to 8 bits, the space in which attacks
    perturb them; unreadable videos are skipped and returned as ``(path, reason)``.
    """
    splitter = ClipSplitter(preprocessing.clip_len, preprocessing.clip_len, preprocessing.frame_step)
    clips, labels, paths, skipped = [], [], [], []
    for path, label in tqdm(videos, desc=description, unit="video", disable=not progress):
        try:
            for clip in iter_file_clips(path, splitter, short_side=preprocessing.short_side):
                if max_clips_per_video is not None and clip.seq >= max_clips_per_video:
                    break
                problem = model_input_problem(clip.frames.shape, preprocessing)
                if problem:
                    skipped.append((str(path), f"{path}: {problem}"))
                    log.warning("skipping %s: %s", path, problem)
                    break
                size = _fixed_size(clip.frames.shape, preprocessing)
                window = resize_crop(clip.frames, preprocessing.short_side, preprocessing.crop, size=size,
                                     fit=preprocessing.fit)
                clips.append(np.ascontiguousarray(window.numpy()))
                labels.append(int(label))
                paths.append(str(path))
        except VideoError as exc:
            skipped.append((str(path), str(exc)))
            log.warning("skipping %s", exc)
    if not clips:
        raise ClipwatchError(f"no readable clips among {len(videos)} videos")
    return np.stack(clips), np.array(labels), paths, skipped


def extract_video_features(
    model: nn.Module, preprocessing, videos: Sequence[tuple[str | Path, int]], layers: Sequence[str], *,
    batch_size: int = 16, pool_factor: int = 4, stride: int | None = None, max_clips_per_video: int | None = None,
    progress: bool = True, description: str = "features", evidence: Evidence | None = None,
) -> ClipFeatures:
    """Features of every clip of every ``(path, label)`` video (and the scores of ``evidence``); unreadable videos
    are skipped and reported."""
    splitter = ClipSplitter(preprocessing.clip_len, stride or preprocessing.clip_len, preprocessing.frame_step)
    meta: list[tuple[str, int, int]] = []
    skipped: list[tuple[str, str]] = []

    def clips() -> Iterator[np.ndarray]:
        for path, label in tqdm(videos, desc=description, unit="video", disable=not progress):
            try:
                for clip in iter_file_clips(path, splitter, short_side=preprocessing.short_side):
                    if max_clips_per_video is not None and clip.seq >= max_clips_per_video:
                        break
                    meta.append((str(path), int(label), clip.seq))
                    yield clip.frames
            except VideoError as exc:
                skipped.append((str(path), str(exc)))
                log.warning("skipping %s", exc)

    inputs = (model_input(np.stack(batch), preprocessing) for batch in _batched(clips(), batch_size))
    feats, logits, scores = extract_from_tensors(model, inputs, layers, pool_factor=pool_factor, evidence=evidence)
    return ClipFeatures(
        feats,
        logits,
        np.array([m[1] for m in meta]),
        [m[0] for m in meta],
        np.array([m[2] for m in meta]),
        skipped,
        scores,
    )


def pixel_batches(videos: Sequence[tuple[str | Path, int]], preprocessing, batch_size: int, *,
                  max_clips_per_video: int | None = None, chunk_videos: int = 64) -> Iterator[torch.Tensor]:
    """The clips of ``videos`` as pixel batches ``(B, 3, T, S, S)`` in ``[0, 1]`` (:func:`pixel_input`), decoded
    ``chunk_videos`` videos at a time so that only one chunk's clips are in memory; a chunk with no readable video
    is passed over (each was logged by :func:`load_clips`)."""
    for start in range(0, len(videos), chunk_videos):
        try:
            clips, _, _, _ = load_clips(videos[start:start + chunk_videos], preprocessing, progress=False,
                                        max_clips_per_video=max_clips_per_video)
        except ClipwatchError:
            continue
        for i in range(0, len(clips), batch_size):
            yield pixel_input(clips[i:i + batch_size], preprocessing)
