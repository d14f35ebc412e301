"""Decode a dataset's videos once into memory as uint8 frames resized exactly as ``pipeline.video.preprocess`` does.

Training then draws every clip from this cache, so each video is decoded once per run rather than once per epoch.
The resize is the same call on the same data as in ``preprocess`` (uint8 bilinear, no antialiasing), so a centre
crop of cached frames passed through ``preprocess`` (which then has nothing left to resize) equals ``preprocess``
on the decoded frames, bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data import VideoSample
from pipeline.video import VideoError, VideoReader, open_video
from pipeline.video.preprocess import resize_frames, resized_size

log = logging.getLogger(__name__)

DECODE_CHUNK = 16
"""Frames decoded and resized together while filling the cache."""


@dataclass(frozen=True)
class SkippedVideo:
    """A listed video left out of the cache, and why (unreadable, or shorter than one clip)."""

    path: str
    reason: str


@dataclass
class ClipCache:
    """Resized uint8 frames of every usable video, with labels; ``frames[i]`` is (T_i, H, W, 3)."""

    frames: list[torch.Tensor]
    labels: torch.Tensor
    paths: list[str]
    skipped: list[SkippedVideo] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        return sum(item.numel() for item in self.frames)

    @classmethod
    def build(cls, samples: Sequence[VideoSample], short_side: int, min_frames: int, *, desc: str = "decode",
              progress: bool = True) -> ClipCache:
        """Decode and resize all ``samples``; bad or too-short videos are skipped, logged and listed in ``skipped``."""
        frames: list[torch.Tensor] = []
        labels: list[int] = []
        paths: list[str] = []
        skipped: list[SkippedVideo] = []
        for sample in tqdm(samples, desc=desc, unit="video", disable=not progress, leave=False):
            try:
                with open_video(sample.path) as reader:
                    if reader.num_frames < min_frames:
                        raise VideoError(sample.path, f"{reader.num_frames} frames, fewer than one clip's "
                                                      f"{min_frames}")
                    resized = _decode_resized(reader, short_side)
            except VideoError as exc:
                log.warning("skipping %s", exc)
                skipped.append(SkippedVideo(str(sample.path), exc.reason))
                continue
            frames.append(resized)
            labels.append(sample.label)
            paths.append(str(sample.path))
        return cls(frames, torch.tensor(labels, dtype=torch.int64), paths, skipped)


def _decode_resized(reader: VideoReader, short_side: int) -> torch.Tensor:
    """All frames of ``reader``, resized, decoded a chunk at a time into one tensor allocated up front.

    Allocating the kept tensor before the large decoded chunks lets the allocator reuse their memory; decoding
    whole videos and keeping only small resized copies fragments the heap to several times the cache's size.
    """
    height, width = resized_size(reader.height, reader.width, short_side)
    out = torch.empty((reader.num_frames, height, width, 3), dtype=torch.uint8)
    for start in range(0, reader.num_frames, DECODE_CHUNK):
        indices = np.arange(start, min(reader.num_frames, start + DECODE_CHUNK))
        out[start:start + len(indices)] = resize_frames(reader.get_frames(indices), short_side)
    return out
