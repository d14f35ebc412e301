"""Open-set training (seed 001): auxiliary outliers made from the training batch, and the objectosphere loss.

Outlier exposure (Hendrycks et al. 2019) needs clips that belong to no known class; here they are made from the
known clips themselves, so no test set, novel set or other corpus can leak in:

- ``shuffle``: a clip's frames in a random order (its appearance, none of its motion);
- ``splice``: the first half of one clip followed by the second half of a clip of another class (two coherent
  motions that no single class performs; the temporal analogue of mixing-based outliers).

The objectosphere loss (Dhamija et al., NeurIPS 2018) trains known clips with cross-entropy and a penultimate
feature norm of at least ``xi``, and outliers with a uniform softmax (the entropic open-set loss) and a feature
norm pulled to zero::

    known:   CE(z, y) + weight * max(1 - ||f|| / xi, 0)^2
    outlier: -mean_c log softmax(z)_c + weight * (||f|| / xi)^2

(the paper's lambda is ``weight / xi^2``: measuring the norm in units of ``xi`` makes ``weight`` independent of
the features' scale), so that an unknown clip shows as a small feature norm and a flat softmax, both usable as
detector scores. With ``weight`` 0 this is plain outlier exposure with a uniform target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OUTLIER_KINDS = ("shuffle", "splice")


def shuffle_frames(clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A ``(C, T, H, W)`` clip's frames in a random order (its appearance, none of its motion)."""
    return clip[:, torch.randperm(clip.shape[1], generator=generator)]


def splice(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The first half of ``(C, T, H, W)`` clip ``first`` followed by the second half of ``second``."""
    half = first.shape[1] // 2
    return torch.cat([first[:, :half], second[:, half:]], dim=1)


def make_outliers(clips: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` outlier clips ``(count, C, T, H, W)`` from a batch of known clips (alternately shuffled and
    spliced); a batch of one class only gives shuffled ones. The input is not modified."""
    batch = clips.shape[0]
    out = []
    for index in range(count):
        first = int(torch.randint(batch, (1,), generator=generator))
        others = torch.nonzero(labels != labels[first]).flatten()
        if index % 2 == 0 or others.numel() == 0:
            out.append(shuffle_frames(clips[first], generator))
        else:
            second = int(others[torch.randint(others.numel(), (1,), generator=generator)])
            out.append(splice(clips[first], clips[second]))
    return torch.stack(out)


class PenultimateFeatures:
    """The input of ``head`` at each forward pass of its model (a forward pre-hook), for the feature-norm terms."""

    def __init__(self, head: nn.Module):
        self.value: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0].flatten(1)

    def close(self) -> None:
        self._handle.remove()


def objectosphere_loss(logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, known: torch.Tensor, *,
                       xi: float, weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """The mean objectosphere loss of a batch whose ``known`` mask marks the known clips (the rest are outliers;
    their ``labels`` are ignored). See the module docstring for the two terms."""
    norms = features.norm(dim=1) / xi
    terms = []
    if known.any():
        ce = F.cross_entropy(logits[known], labels[known], label_smoothing=label_smoothing, reduction="none")
        terms.append(ce + weight * torch.clamp(1.0 - norms[known], min=0.0) ** 2)
    if (~known).any():
        uniform = -torch.log_softmax(logits[~known], dim=1).mean(dim=1)
        terms.append(uniform + weight * norms[~known] ** 2)
    return torch.cat(terms).mean()
