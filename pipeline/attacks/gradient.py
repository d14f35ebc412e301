"""L∞ gradient-sign attacks in pixel space: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

``eps`` and ``step_size`` are in pixel units of ``[0, 1]`` (8/255 is the usual budget). Results stay in the ε-ball
around the clean clips and in ``[0, 1]``. With ``quantize=True`` (default) they are then snapped to the 8-bit grid
without leaving the ball, so what a uint8 file stores is exactly what was evaluated.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.attacks.common import (
    PIXEL_LEVELS,
    Labels,
    NormalizeFn,
    Objective,
    check_clips,
    check_labels,
    check_positive,
    frozen,
    model_objective,
    project_to_grid,
)
from pipeline.attacks.errors import AttackError


def fgsm(
    model: nn.Module,
    clips: torch.Tensor,
    labels: Labels,
    normalize: NormalizeFn | None = None,
    *,
    eps: float = 8 / 255,
    targeted: bool = False,
    quantize: bool = True,
) -> torch.Tensor:
    """One signed-gradient step of size ``eps``: up the true label's loss, or down the target's (``targeted``)."""
    clips = check_clips(clips)
    _check_budget(eps, quantize)
    targets = check_labels(labels, len(clips), clips.device)
    loss = model_objective(model, normalize, targeted)
    with frozen(model):
        adversarial = clips - eps * _objective_gradient(loss, clips, targets).sign()
    return _finish(adversarial.clamp(0, 1), clips, eps, quantize)


def pgd(
    model: nn.Module,
    clips: torch.Tensor,
    labels: Labels,
    normalize: NormalizeFn | None = None,
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    seed: int = 0,
    targeted: bool = False,
    quantize: bool = True,
    objective: Objective | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the L∞ ball: ``steps`` signed steps of ``step_size``, each projected back.

    ``random_start`` begins at a uniform point of the ball drawn from a generator seeded with ``seed``, so runs
    are reproducible. Returns the last iterate. ``objective`` replaces the cross-entropy objective (it is
    minimised; see :data:`~pipeline.attacks.common.Objective`); ``targeted`` then does nothing.
    """
    clips = check_clips(clips)
    _check_budget(eps, quantize)
    check_positive("pgd: step_size", step_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttackError(f"pgd: steps must be a positive integer, got {steps!r}")
    targets = check_labels(labels, len(clips), clips.device)
    loss = objective or model_objective(model, normalize, targeted)
    adversarial = clips.clone()
    if random_start:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(clips.shape, generator=generator, dtype=clips.dtype) * 2 - 1
        adversarial = (clips + eps * noise.to(clips.device)).clamp(0, 1)
    with frozen(model):
        for _ in range(steps):
            gradient = _objective_gradient(loss, adversarial, targets)
            adversarial = adversarial - step_size * gradient.sign()
            adversarial = torch.minimum(torch.maximum(adversarial, clips - eps), clips + eps).clamp(0, 1)
    return _finish(adversarial, clips, eps, quantize)


def _objective_gradient(loss: Objective, clips: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed per-clip objective (to minimise) w.r.t. the pixels; each clip's part is its own."""
    pixels = clips.detach().requires_grad_(True)
    objective = loss(pixels, targets).sum()
    (gradient,) = torch.autograd.grad(objective, pixels)
    return gradient


def _check_budget(eps: float, quantize: bool) -> None:
    check_positive("eps", eps)
    if quantize and eps < 1 / PIXEL_LEVELS - 1e-9:
        raise AttackError(f"eps {eps:.4g} is below one 8-bit level (1/255); use quantize=False for sub-level budgets")


def _finish(adversarial: torch.Tensor, clean: torch.Tensor, eps: float, quantize: bool) -> torch.Tensor:
    return (project_to_grid(adversarial, clean, eps) if quantize else adversarial).detach()
