"""ODIN (Liang, Li & Srikant, ICLR 2018): temperature scaling plus a small input perturbation, through the model.

ODIN needs gradients with respect to the pixels, so it scores clips, not features:
``ODIN().fit(train).score_clips(model, clips, normalize)``, with ``clips`` in the attacks' pixel space
(``(B, 3, T, H, W)`` floats in ``[0, 1]``, see :mod:`pipeline.attacks.common`) and ``normalize`` mapping them to the
model's input (e.g. ``pipeline.attacks.Normalize.from_preprocessing(preprocessing)``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pipeline.detect.features import ClipFeatures, model_device
from pipeline.detect.zoo.base import ZooDetector, ZooError, check_positive


class ODIN(ZooDetector):
    """``max_c softmax(f(x') / T)_c`` with ``x' = x + epsilon * sign(grad_x log max_c softmax(f(x) / T)_c)``.

    The perturbation raises the temperature-scaled confidence, which it does more for in-distribution inputs. It is
    applied in pixel units (ODIN's original code divides the step by the normalisation's std, the same thing) and,
    as in the paper, the perturbed clip is not clipped to ``[0, 1]``. ``temperature`` and ``epsilon`` are fixed (the
    paper's ``T = 1000``; ``epsilon = 0.0014``, its CIFAR value): the paper tunes them on OOD data, which a monitor
    does not have. ``fit`` only records the number of classes.
    """

    name = "odin"
    needs_clips = True

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014, batch_size: int = 16):
        self.temperature = temperature
        self.epsilon = epsilon
        self.batch_size = batch_size

    def _validate(self) -> None:
        check_positive(self.name, "temperature", self.temperature)
        check_positive(self.name, "batch_size", self.batch_size, integer=True)
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) or not 0 <= self.epsilon < 1:
            raise ZooError(f"{self.name}: epsilon must be a number in [0, 1) (pixel units), got {self.epsilon!r}")

    def _score(self, features: ClipFeatures) -> np.ndarray:
        raise ZooError(f"{self.name} scores pixels: call score_clips(model, clips, normalize)")

    def perturb(self, model: nn.Module, clips: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """ODIN's input preprocessing of one batch of pixel clips, on the model's device (``clips`` untouched)."""
        x = clips.detach().to(model_device(model), torch.float32).requires_grad_(True)
        with torch.enable_grad():
            log_probs = torch.log_softmax(model(normalize(x)).double() / float(self.temperature), dim=1)
            (grad,) = torch.autograd.grad(log_probs.max(dim=1).values.sum(), x)
        return x.detach() + float(self.epsilon) * grad.sign()

    def score_clips(self, model: nn.Module, clips: torch.Tensor,
                    normalize: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """ODIN scores ``(N,)`` of pixel clips ``(N, 3, T, H, W)`` in ``[0, 1]``; ``model`` must be in eval mode."""
        if not hasattr(self, "n_classes_"):
            raise ZooError(f"{self.name} is not fitted: call fit(train) first")
        if model.training:
            raise ZooError(f"{self.name}: put the model in eval() mode first (batch norm would learn from the clips)")
        if not isinstance(clips, torch.Tensor) or clips.ndim != 5 or not clips.is_floating_point():
            raise ZooError(f"{self.name}: clips must be a float (N, 3, T, H, W) tensor in [0, 1], got "
                           f"{type(clips).__name__} {tuple(getattr(clips, 'shape', ()))}")
        parts = []
        for start in range(0, clips.shape[0], int(self.batch_size)):
            perturbed = self.perturb(model, clips[start:start + int(self.batch_size)], normalize)
            with torch.inference_mode():
                logits = model(normalize(perturbed)).double() / float(self.temperature)
            if logits.shape[1] != self.n_classes_:
                raise ZooError(f"{self.name}: the model has {logits.shape[1]} classes, fitted with {self.n_classes_}")
            parts.append(torch.softmax(logits, dim=1).max(dim=1).values.cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros(0)
