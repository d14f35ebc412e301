"""Training clips drawn from a :class:`ClipCache`: random start and crop, brightness/contrast jitter, normalisation.

No plain flips: mirroring in space turns MoveLeft into MoveRight and RotateClockwise into RotateCounterClockwise,
and reversing time swaps Grow and Shrink, so a flip that kept its label would teach the model wrong labels. Flips
happen only as label-mapping symmetries (``pipeline.training.symmetry``), which change the label with the clip.
All randomness comes from the ``torch.Generator`` passed in, which makes a run resumable exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.training.cache import ClipCache
from pipeline.training.config import TrainConfig
from pipeline.training.symmetry import apply_transform, label_tables
from pipeline.video import ClipSplitter
from pipeline.video.preprocess import resize_frames


def normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x - mean) / std`` for x in 0-1 units as ``x * scale + shift``, computed in float64, shaped (1, 3, 1, 1, 1)."""
    mean64, std64 = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    scale = torch.from_numpy((1.0 / std64).astype(np.float32)).view(1, 3, 1, 1, 1)
    shift = torch.from_numpy((-mean64 / std64).astype(np.float32)).view(1, 3, 1, 1, 1)
    return scale, shift


class ClipSampler:
    """Makes augmented, normalised training batches ``(B, 3, T, crop, crop)`` from cached videos.

    ``classes`` names the cache's labels, for the label-mapping symmetries of ``config.symmetries``.
    """

    def __init__(self, cache: ClipCache, config: TrainConfig, classes: Sequence[str]) -> None:
        self.cache = cache
        self.config = config
        self.tables = label_tables(config.symmetries, classes)
        self.scale, self.shift = normalisation(config.mean, config.std)
        self.grid = ClipSplitter(config.clip_len, config.eval_stride, config.frame_step)

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips of the cached videos at ``indices`` and their labels (after any symmetry): one clip per index, or
        with ``paired_symmetries`` two in a row, a clip and its mirror/reversal (see :meth:`_partner`)."""
        pairs = []
        for index in indices:
            clip, label = self._clip(int(index), generator)
            pairs.append((clip, label))
            if self.config.paired_symmetries:
                pairs.append(self._partner(int(index), clip, label, generator))
        clips = torch.stack([clip for clip, _ in pairs])
        labels = torch.tensor([label for _, label in pairs], dtype=torch.int64)
        x = clips.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
        x = self._jitter(x, generator)
        return x.mul_(self.scale).add_(self.shift), labels

    def _clip(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """A random (T, crop, crop, 3) uint8 clip of video ``index`` (a random window of its fitted frames), each
        symmetry applied with probability 1/2."""
        config = self.config
        frames = self.cache.frames[index]
        length, height, width, _ = frames.shape
        if config.temporal_jitter:
            start = _randint(length - config.span + 1, generator)
        else:
            starts = [int(plan[0]) for plan in self.grid.plan(length)]
            start = starts[_randint(len(starts), generator)]
        if config.fit == "stretch":  # the cache holds frames resized to the short side: square them as preprocess does
            height = width = min(height, width)
        side = config.crop
        if config.min_scale < 1:  # zoom in: a smaller square window, scaled up to the crop below
            low = max(1, round(config.min_scale * min(height, width)))
            side = low + _randint(min(height, width) - low + 1, generator)
        top = _randint(height - side + 1, generator)
        left = _randint(width - side + 1, generator)
        clip = frames[start:start + config.span:config.frame_step]
        if config.fit == "stretch":
            clip = resize_frames(clip, height, size=(height, width))
        clip = clip[:, top:top + side, left:left + side]
        if side != config.crop:
            clip = resize_frames(clip, config.crop, size=(config.crop, config.crop))
        label = int(self.cache.labels[index])
        for name, table in self.tables.items():
            if _randint(2, generator) and table[label] >= 0:
                clip, label = apply_transform(name, clip), int(table[label])
        return clip, label

    def _partner(self, index: int, clip: torch.Tensor, label: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """The same crop under a random non-empty set of the symmetries that apply to its class (so only the
        motion differs between the two), or another clip of the same video if none applies."""
        names = [name for name, table in self.tables.items() if table[label] >= 0]
        if not names:
            return self._clip(index, generator)
        while True:
            chosen = [name for name in names if _randint(2, generator)]
            if chosen:
                break
        for name in chosen:
            clip, label = apply_transform(name, clip), int(self.tables[name][label])
        return clip, label

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-clip contrast (around the clip's mean level) and brightness change, in 0-1 units, clamped."""
        config = self.config
        if config.brightness == 0 and config.contrast == 0:
            return x
        batch = x.shape[0]
        draws = torch.rand(batch, 2, generator=generator, dtype=torch.float32) * 2 - 1
        contrast = (1 + config.contrast * draws[:, 0]).view(batch, 1, 1, 1, 1)
        brightness = (config.brightness * draws[:, 1]).view(batch, 1, 1, 1, 1)
        level = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        return x.sub_(level).mul_(contrast).add_(level + brightness).clamp_(0.0, 1.0)


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))
