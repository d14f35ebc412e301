"""A differentiable copy of a detector bundle's scores, for attacks that know the detector (Carlini & Wagner 2017).

:class:`TorchBundleScorer` maps pixel clips to what :meth:`DetectorBundle.score` computes, in torch so that
gradients reach the pixels: normalisation, the model with a grad-enabled :class:`~pipeline.models.FeatureTap`
(features pooled by the bundle's ``pool_factor``), each layer's PCA projection, every fitted density's
log-likelihood (the largest class log-likelihood, GMM components log-sum-exped per class), the output score of
bundles that fuse one (``logsumexp`` of the logits layer's features), the per-key standardisation and the fused
score of :meth:`Calibration.fuse` (group means, standardised again, lowest fused group). The evidence a bundle fuses
besides its densities (:mod:`pipeline.detect.evidence`: the heatmap through its decoder, the masked-border
consistency through a second forward pass) is computed the same way, so an attacker descends through it too;
groups the bundle leaves out of its fused score are left out here as well.

Exactness: from the tapped features on, the formulas are those of the numpy bundle in float64, from the fitted
attributes (nothing is refitted); the features come from the same float32 forward pass as
:meth:`Detector.features`. The bundle's densities score with their ``scoring_dtype`` kernel (float32 by default,
refined near the best class), so the two agree to float32 rounding of the quadratic forms, not bit for bit.
Gradients are exact almost everywhere: the two maxima (over classes, over groups) pass the gradient to the
winning class and the lowest group only, and rounding clips to 8 bits is not differentiable at all (attacks
optimise in float and round afterwards; :mod:`pipeline.attacks.adaptive`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline.detect.evidence import Evidence
from pipeline.errors import ClipwatchError
from pipeline.models import FeatureTap

if TYPE_CHECKING:
    from pipeline.detect.bundle import DetectorBundle

LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class TorchScores:
    """Scores of a batch, in the autograd graph: ``logits (B, C)`` float32, the rest ``(B,)`` float64."""

    logits: torch.Tensor
    loglik: dict[str, torch.Tensor]
    groups: dict[str, torch.Tensor]
    fused: torch.Tensor


def _float64(values, device: torch.device) -> torch.Tensor:
    """A float64 tensor copy of a fitted numpy array (the bundle's arrays are never shared or modified)."""
    return torch.tensor(np.asarray(values), dtype=torch.float64, device=device)


class _DensityTable:
    """One fitted density's components as float64 tensors: ``log p(x | k) = logsumexp_j [o_j - |(x - mu_j) P_j|^2 / 2]``."""

    def __init__(self, density, device: torch.device) -> None:
        means, factors, log_weights, component_class = density._components()
        factors = np.asarray(factors, dtype=np.float64)
        self.tied = factors.ndim == 2
        diagonals = np.diagonal(factors) if self.tied else np.diagonal(factors, axis1=1, axis2=2)
        log_dets = np.sum(np.log(diagonals), axis=-1)
        d = means.shape[1]
        offsets = np.asarray(log_weights, dtype=np.float64) + log_dets - 0.5 * d * LOG_2PI
        self.factors = _float64(factors, device)
        projected_means = means @ factors if self.tied else np.einsum("jd,jde->je", means, factors)
        self.projected_means = _float64(projected_means, device)
        self.offsets = _float64(np.broadcast_to(offsets, (means.shape[0],)), device)
        classes = np.asarray(component_class, dtype=np.int64)
        n_classes = len(density.classes_)
        starts = np.searchsorted(classes, np.arange(n_classes + 1))
        self.spans = None if classes.size == n_classes else list(zip(starts[:-1], starts[1:], strict=True))

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """``(N,)`` largest class log-likelihood of reduced features ``z (N, d)`` float64 (``score_samples``)."""
        if self.tied:
            y = (z @ self.factors)[:, None, :] - self.projected_means
        else:
            y = torch.einsum("nd,jde->nje", z, self.factors) - self.projected_means
        log_density = self.offsets - 0.5 * y.square().sum(dim=2)
        if self.spans is not None:
            log_density = torch.stack([torch.logsumexp(log_density[:, a:b], dim=1) for a, b in self.spans], dim=1)
        return log_density.max(dim=1).values


class TorchBundleScorer:
    """Differentiable scores of pixel clips ``(B, C, T, H, W)`` under a bundle and the model it was fitted on.

    ``normalize`` maps pixels to model input (``pipeline.attacks.Normalize``; ``None``: clips are model input
    already). ``keys`` limits the densities scored to these ``"layer/density"`` keys (the fused keys are always
    scored; default: every key of the bundle). Densities run in float64 on the model's device (the CPU for MPS,
    which lacks float64). The tap's hooks stay on the model until :meth:`close` (or the ``with`` block ends);
    they capture nothing outside a call. Put the model in eval mode (attacks do, through ``frozen``).

    ``heatmap`` is the bundle's heatmap decoder (``Detector.heatmap``), required when the bundle fuses its score.

    ``scorer(clips).fused`` equals ``bundle.score(...).fused``: **the minimum over the groups**, so its gradient
    flows through the lowest group only (the one that sets the fused score), and within a density through the
    most likely class only.
    """

    def __init__(self, bundle: DetectorBundle, model: nn.Module,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                 keys: Sequence[str] | None = None, heatmap=None) -> None:
        calibration = bundle.calibration
        self._output_key = getattr(bundle, "output_key", None)  # "<logits layer>/logsumexp" in bundles that fuse it
        evidence_keys = tuple(getattr(bundle, "evidence_keys", ()))
        try:
            self._evidence = Evidence(evidence_keys, heatmap, getattr(bundle, "border", 0))
        except ValueError as error:
            raise ClipwatchError(f"the bundle fuses {', '.join(evidence_keys)}: {error}") from None
        wanted = list(calibration.keys if keys is None else keys)
        unknown = [k for k in wanted if k not in bundle.densities and k != self._output_key
                   and k not in evidence_keys]
        if unknown:
            raise ClipwatchError(f"keys {unknown} are not scores of the bundle ({', '.join(calibration.keys)})")
        self.keys = list(dict.fromkeys([*wanted, *calibration.fused_keys]))
        self.model = model
        self.normalize = normalize if normalize is not None else (lambda clips: clips)
        parameter = next(iter(model.parameters()), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        self.device = torch.device("cpu") if device.type == "mps" else device
        self.layers = [layer for layer in bundle.layers if any(k.split("/")[0] == layer for k in self.keys)]
        reducers = {layer: bundle.reducers[layer] for layer in self.layers}
        self._reducers = {layer: (_float64(r.mean_, self.device), _float64(r.components_.T, self.device))
                          for layer, r in reducers.items()}
        self._tables = {key: _DensityTable(bundle.densities[key], self.device) for key in self.keys
                        if key in bundle.densities}
        index = {key: i for i, key in enumerate(calibration.keys)}
        self._standard = {key: (float(calibration.means[index[key]]), float(calibration.stds[index[key]]))
                          for key in calibration.fused_keys}
        self._groups = calibration.groups
        self._fused_groups = calibration.fused_groups
        self._group_means = _float64(calibration.group_means, self.device)
        self._group_stds = _float64(calibration.group_stds, self.device)
        self._tap = FeatureTap(model, self.layers, pool_factor=int(bundle.settings["pool_factor"]), enable_grad=True)

    def __call__(self, clips: torch.Tensor) -> TorchScores:
        """Scores of a batch of pixel clips, differentiable w.r.t. ``clips`` unless called under ``torch.no_grad()``."""
        if not isinstance(clips, torch.Tensor) or clips.ndim != 5 or clips.shape[0] == 0:
            shape = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
            raise ClipwatchError(f"expected a non-empty (B, C, T, H, W) tensor of clips, got {shape}")
        self._tap.enable_grad = torch.is_grad_enabled()  # under torch.no_grad(): no graph, inference mode
        logits, features, evidence, _ = self._evidence.forward(self.model, self._tap, self.normalize(clips))
        reduced = {}
        for layer, (mean, components) in self._reducers.items():
            reduced[layer] = (features[layer].to(self.device, torch.float64) - mean) @ components
        loglik = {}
        for key in self.keys:
            if key in self._tables:
                loglik[key] = self._tables[key].score(reduced[key.split("/")[0]])
            elif key in evidence:
                loglik[key] = evidence[key].to(self.device)
            else:  # the output score
                loglik[key] = torch.logsumexp(features[key.split("/")[0]].to(self.device, torch.float64), dim=1)
        groups = {}
        for i, (name, keys) in enumerate(self._groups.items()):
            standardised = [(loglik[k] - self._standard[k][0]) / self._standard[k][1] for k in keys]
            groups[name] = (torch.stack(standardised).mean(dim=0) - self._group_means[i]) / self._group_stds[i]
        fused = torch.stack([groups[name] for name in self._fused_groups]).min(dim=0).values
        return TorchScores(logits, loglik, groups, fused)

    def close(self) -> None:
        """Remove the feature tap's hooks from the model (idempotent)."""
        self._tap.close()

    def __enter__(self) -> TorchBundleScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
