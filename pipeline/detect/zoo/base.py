"""The contract the zoo's detectors share, parameter checks, and the classifier head some of them need.

Every detector follows scikit-learn's estimator contract: parameters are stored as given by ``__init__`` and
validated once, in ``fit(train)``, which returns ``self``; fitted attributes end in ``_``; ``score(features)``
returns one float64 score per clip, HIGHER = more in-distribution (like the densities' log-likelihoods). ``fit``
and ``score`` read :class:`~pipeline.detect.ClipFeatures` and never modify its arrays. Detectors that need the
model and the pixels (``needs_clips = True``, ODIN) score with ``score_clips(model, clips, normalize)`` instead;
those also fitted on training pixels (``needs_training_clips = True``, ``gradient``) take
``fit_clips(model, clips, normalize)`` after ``fit(train)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.base import BaseEstimator
from torch import nn

from pipeline.detect.features import ClipFeatures
from pipeline.errors import ClipwatchError


class ZooError(ClipwatchError):
    """A zoo detector was given a bad parameter or features it cannot use (one line)."""


class ZooDetector(BaseEstimator):
    """Base of the zoo: ``fit(train) -> self`` and ``score(features) -> (N,)``, higher = more in-distribution."""

    name: ClassVar[str] = ""
    needs_clips: ClassVar[bool] = False
    """True for detectors that score pixels through the model (``score_clips``) rather than features."""
    needs_training_clips: ClassVar[bool] = False
    """True for detectors fitted on training pixels through the model (``fit_clips``) as well."""

    @property
    def layer_used(self) -> str:
        """The tapped layer the score reads: the detector's ``layer`` parameter when it has one, else ``"output"``
        (the logits); ``"all"`` for several."""
        return getattr(self, "layer", None) or "output"

    def fit(self, train: ClipFeatures) -> ZooDetector:
        self._validate()
        self.n_classes_ = _logits(train, self.name).shape[1]
        self._fit(train)
        return self

    def score(self, features: ClipFeatures) -> np.ndarray:
        if not hasattr(self, "n_classes_"):
            raise ZooError(f"{self.name} is not fitted: call fit(train) first")
        if _logits(features, self.name).shape[1] != self.n_classes_:
            raise ZooError(f"{self.name}: {features.logits.shape[1]} classes, fitted with {self.n_classes_}")
        return self._score(features)

    def _validate(self) -> None:
        """Check the parameters (once, in ``fit``); raise a one-line :class:`ZooError`."""

    def _fit(self, train: ClipFeatures) -> None:
        """Set the fitted attributes from the training features."""

    def _score(self, features: ClipFeatures) -> np.ndarray:
        raise NotImplementedError


def _logits(features: ClipFeatures, name: str) -> np.ndarray:
    logits = np.asarray(features.logits)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ZooError(f"{name}: logits must be (N, C) with N >= 1 and C >= 2, got shape {logits.shape}")
    return logits


def logits64(features: ClipFeatures, name: str) -> np.ndarray:
    """The clips' logits as a float64 array (a new array when they are not float64 already; never modified)."""
    logits = np.asarray(_logits(features, name), dtype=np.float64)
    if not np.isfinite(logits).all():
        raise ZooError(f"{name}: logits contain NaN or inf")
    return logits


def layer64(features: ClipFeatures, layer: str, name: str, n_features: int | None = None) -> np.ndarray:
    """``features.layers[layer]`` as a finite float64 ``(N, D)`` array, or a one-line :class:`ZooError`."""
    if layer not in features.layers:
        raise ZooError(f"{name}: layer {layer!r} is not among the tapped layers {sorted(features.layers)}")
    values = np.asarray(features.layers[layer], dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(features):
        raise ZooError(f"{name}: layer {layer!r} must be ({len(features)}, D), got shape {values.shape}")
    if n_features is not None and values.shape[1] != n_features:
        raise ZooError(f"{name}: layer {layer!r} has {values.shape[1]} features, fitted with {n_features}")
    if not np.isfinite(values).all():
        raise ZooError(f"{name}: layer {layer!r} contains NaN or inf")
    return values


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` per row (Liu et al. 2020), in float64."""
    return temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def check_positive(name: str, parameter: str, value, *, integer: bool = False) -> None:
    """Refuse anything but a finite positive number (an integer when ``integer``), bools included."""
    kind = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind) or not np.isfinite(value) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ZooError(f"{name}: {parameter} must be {what}, got {value!r}")


def check_layer(name: str, layer) -> None:
    if not isinstance(layer, str) or not layer:
        raise ZooError(f"{name}: layer must be a tapped layer's name, got {layer!r}")


def clip_batches(name: str, clips, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of at most ``batch_size`` pixel clips from ``clips``: a float ``(N, 3, T, H, W)`` tensor in ``[0, 1]``,
    or a callable returning an iterable of such tensors (called anew on each use); a one-line ZooError otherwise."""
    source = clips() if callable(clips) else [clips]
    for chunk in source:
        if not isinstance(chunk, torch.Tensor) or chunk.ndim != 5 or not chunk.is_floating_point():
            raise ZooError(f"{name}: clips must be float (N, 3, T, H, W) tensors in [0, 1], got "
                           f"{type(chunk).__name__} {tuple(getattr(chunk, 'shape', ()))}")
        for start in range(0, chunk.shape[0], int(batch_size)):
            yield chunk[start:start + int(batch_size)]


def check_head(name: str, head) -> None:
    if head is not None and not isinstance(head, LinearHead):
        raise ZooError(f"{name}: head must be a LinearHead or None, got {type(head).__name__}")


def check_feeds(name: str, head: LinearHead | None, train: ClipFeatures, layer: str) -> None:
    """With a ``head``, refuse a ``layer`` whose features do not reproduce the logits through it."""
    if head is not None and not head.feeds(train, layer):
        raise ZooError(f"{name}: layer {layer!r} does not reproduce the logits through the head")


@dataclass(frozen=True, eq=False)
class LinearHead:
    """The classifier's last linear layer, ``logits = h @ weight.T + bias``, in float64; ``tolerance`` is how closely
    (relative to the largest logit) its input must reproduce the model's logits: 1e-3 for a model run in fp32, looser
    for one run in bf16 / fp16, whose own arithmetic differs from float64 by about 1 %."""

    weight: np.ndarray
    bias: np.ndarray
    name: str = "head"
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        weight, bias = np.asarray(self.weight, dtype=np.float64), np.asarray(self.bias, dtype=np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ZooError(f"head {self.name}: weight (C, D) and bias (C,) expected, got {weight.shape} and {bias.shape}")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, dtype=np.float64) @ self.weight.T + self.bias

    def feeds(self, features: ClipFeatures, layer: str, *, rows: int = 256) -> bool:
        """Whether ``layer``'s features are this head's input: they reproduce the logits to ``tolerance``
        (relative to the largest logit) on the first ``rows`` clips."""
        tolerance = self.tolerance
        values = features.layers.get(layer)
        if values is None or np.ndim(values) != 2 or np.shape(values)[1] != self.in_features:
            return False
        logits = np.asarray(features.logits[:rows], dtype=np.float64)
        error = np.abs(self.logits(np.asarray(values[:rows])) - logits).max(initial=0.0)
        return bool(error <= tolerance * max(np.abs(logits).max(initial=0.0), 1.0))


def linear_head(model: nn.Module) -> LinearHead:
    """The last ``nn.Linear`` registered in ``model`` (``fc`` of the 3D ResNets, ``fc8`` of C3D), copied to float64.

    Registration order is a heuristic: :meth:`LinearHead.feeds` checks that a layer's features really are its input.
    """
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name, module
    if found is None:
        raise ZooError(f"{type(model).__name__} has no nn.Linear classifier head")
    name, module = found
    weight = module.weight.detach().double().cpu().numpy()
    bias = module.bias.detach().double().cpu().numpy() if module.bias is not None else np.zeros(weight.shape[0])
    reduced = module.weight.dtype in (torch.bfloat16, torch.float16)  # a model prepared for bf16 / fp16 inference
    return LinearHead(weight, bias, name, tolerance=3e-2 if reduced else 1e-3)


def feeding_layer(features: ClipFeatures, head: LinearHead, layers=None) -> str | None:
    """The tapped layer (among ``layers``, default all; the last one wins) whose features are ``head``'s input, or
    None. For the 3D ResNets that is ``avgpool`` (or ``layer4`` when its pooled map is 1x1x1); C3D's ``fc7`` is
    not, since ``fc8`` reads it after a ReLU."""
    candidates = [layer for layer in (layers or features.layers) if head.feeds(features, layer)]
    return candidates[-1] if candidates else None
