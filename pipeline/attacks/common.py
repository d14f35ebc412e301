"""Plumbing shared by the attacks: pixel-space checks, normalisation, model handling, objectives, 8-bit grid.

Every attack works on clips in PIXEL space: float tensors ``(B, C, T, H, W)`` with values in ``[0, 1]``. The model
sees ``normalize(clips)``, so perturbation budgets (ε, frame values) are in pixel units and clamping to the valid
range is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.errors import AttackError
from pipeline.fileio import atomic_write, file_sha256  # noqa: F401  (re-exported for attacks.io and attacks.frame)
from pipeline.models.manifest import ModelManifest, Preprocessing

NormalizeFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps pixel clips in ``[0, 1]`` to model input; ``None`` wherever accepted means the identity."""

Labels = torch.Tensor | Sequence[int] | int
"""True labels (untargeted) or targets (targeted), one per clip; a single ``int`` applies to every clip."""

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(pixel_clips, labels) -> (B,)``: a per-clip value to MINIMISE, each clip's depending on that clip only
(default: :func:`attack_objective` of the model's logits; :mod:`pipeline.attacks.adaptive` adds a detector term)."""

PIXEL_LEVELS = 255
"""8-bit quantisation: stored clips take the values ``k / 255``."""


class Normalize:
    """``(clips - mean) / std`` per channel, the model input for pixel clips ``(B, C, T, H, W)`` in ``[0, 1]``.

    ``mean`` and ``std`` are in 0-1 units, as in a model manifest's ``preprocessing`` and :func:`preprocess`.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or not mean:
            raise AttackError(f"Normalize: mean and std need the same positive length, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise AttackError(f"Normalize: std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        shape = (1, len(self.mean), 1, 1, 1)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(shape)

    @classmethod
    def from_preprocessing(cls, preprocessing: Preprocessing) -> Normalize:
        """The normalisation a model's manifest prescribes."""
        return cls(preprocessing.mean, preprocessing.std)

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> Normalize:
        """The normalisation of the model described by ``manifest``."""
        return cls.from_preprocessing(manifest.preprocessing)

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5 or clips.shape[1] != len(self.mean):
            raise AttackError(f"Normalize: expected (B, {len(self.mean)}, T, H, W) clips, got {tuple(clips.shape)}")
        mean = self._mean.to(device=clips.device, dtype=clips.dtype)
        std = self._std.to(device=clips.device, dtype=clips.dtype)
        return (clips - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def resolve_normalize(normalize: NormalizeFn | None) -> NormalizeFn:
    """``normalize`` itself, or the identity for ``None`` (a model that takes ``[0, 1]`` pixels)."""
    if normalize is None:
        return lambda clips: clips
    if not callable(normalize):
        raise AttackError(f"normalize must be callable or None, got {type(normalize).__name__}")
    return normalize


def check_clips(clips: torch.Tensor, name: str = "clips") -> torch.Tensor:
    """Validate a pixel-space batch ``(B, C, T, H, W)``, float, finite, in ``[0, 1]``; return it detached."""
    if not isinstance(clips, torch.Tensor):
        raise AttackError(f"{name}: expected a torch.Tensor, got {type(clips).__name__}")
    if clips.ndim != 5 or clips.shape[0] == 0:
        raise AttackError(f"{name}: expected a non-empty (B, C, T, H, W) batch, got shape {tuple(clips.shape)}")
    if not clips.is_floating_point():
        raise AttackError(f"{name}: expected float pixels in [0, 1], got dtype {clips.dtype}")
    if not bool(torch.isfinite(clips).all()):
        raise AttackError(f"{name}: contains NaN or infinite values")
    low, high = float(clips.min()), float(clips.max())
    if low < 0.0 or high > 1.0:
        raise AttackError(
            f"{name}: pixels must lie in [0, 1] (got min {low:.4g}, max {high:.4g}); scale uint8 by 1/255"
        )
    return clips.detach()


def check_labels(labels: torch.Tensor | Sequence[int] | int, batch: int, device: torch.device) -> torch.Tensor:
    """Labels as a ``(batch,)`` int64 tensor on ``device``; an ``int`` is one label (e.g. a target) for all clips."""
    if isinstance(labels, bool):
        raise AttackError(f"labels must be integers, got {labels!r}")
    if isinstance(labels, int):
        return torch.full((batch,), labels, dtype=torch.int64, device=device)
    tensor = torch.as_tensor(labels, device=device)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise AttackError(f"labels must be integers, got dtype {tensor.dtype}")
    if tensor.shape != (batch,):
        raise AttackError(f"labels must have shape ({batch},) to match the clips, got {tuple(tensor.shape)}")
    return tensor.to(torch.int64)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """One-line error unless ``value`` is a positive (or, with ``allow_zero``, non-negative) finite number."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise AttackError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value!r}")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run an attack on ``model`` in eval mode with its parameters frozen; restore both flags afterwards.

    Eval mode keeps BatchNorm statistics and dropout fixed (and each clip's result independent of its batch);
    frozen parameters mean no gradient is ever accumulated on the model.
    """
    was_training = model.training
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    model.eval()
    for param, _ in requires_grad:
        param.requires_grad_(False)
    try:
        yield model
    finally:
        for param, flag in requires_grad:
            param.requires_grad_(flag)
        model.train(was_training)


def attack_objective(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-clip value an attack MINIMISES: cross-entropy of the target, or minus that of the true label."""
    loss = F.cross_entropy(logits, labels, reduction="none")
    return loss if targeted else -loss


def model_objective(model: nn.Module, normalize: NormalizeFn | None, targeted: bool) -> Objective:
    """The default :data:`Objective`: :func:`attack_objective` of ``model``'s logits on the normalised clips."""
    to_input = resolve_normalize(normalize)
    return lambda pixels, labels: attack_objective(model(to_input(pixels)), labels, targeted)


def predict(
    model: nn.Module, clips: torch.Tensor, normalize: NormalizeFn | None = None, *, batch_size: int = 32
) -> torch.Tensor:
    """Predicted labels ``(B,)`` of pixel clips, in eval mode without gradients (model flags restored)."""
    clips = check_clips(clips)
    to_input = resolve_normalize(normalize)
    with frozen(model), torch.no_grad():
        return torch.cat([model(to_input(chunk)).argmax(1) for chunk in clips.split(batch_size)])


def straight_through_quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid in the forward pass (values exactly ``k / 255``), identity gradient backwards."""
    rounded = torch.round(pixels.detach() * PIXEL_LEVELS) / PIXEL_LEVELS
    return rounded + (pixels - pixels.detach())


def project_to_grid(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest 8-bit grid value to ``adversarial`` that stays in ``[0, 1]`` and within ``eps`` of ``clean``.

    Needs ``eps >= 1/255`` so that every ε-interval holds a grid point; a small tolerance absorbs float32
    rounding of grid values such as ``128/255``.
    """
    tolerance = 1e-4
    rounded = torch.round(adversarial * PIXEL_LEVELS)
    low = torch.ceil(((clean - eps) * PIXEL_LEVELS - tolerance).clamp(min=0))
    high = torch.floor(((clean + eps) * PIXEL_LEVELS + tolerance).clamp(max=PIXEL_LEVELS))
    return torch.minimum(torch.maximum(rounded, low), high) / PIXEL_LEVELS
