"""Baselines read off the classifier's output: maximum softmax, maximum logit, energy, and GradNorm.

None of them learns anything from the training clips; ``fit`` only validates the parameters and records the
number of classes, so that scoring features of another model is refused.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from pipeline.detect.features import ClipFeatures
from pipeline.detect.zoo.base import (
    LinearHead,
    ZooDetector,
    check_feeds,
    check_head,
    check_layer,
    check_positive,
    energy,
    layer64,
    logits64,
)


class MSP(ZooDetector):
    """Maximum softmax probability ``max_c softmax(z)_c`` (Hendrycks & Gimpel, ICLR 2017)."""

    name = "msp"

    def _score(self, features: ClipFeatures) -> np.ndarray:
        return softmax(logits64(features, self.name), axis=1).max(axis=1)


class MaxLogit(ZooDetector):
    """Maximum logit ``max_c z_c`` (Hendrycks et al., "Scaling out-of-distribution detection...", ICML 2022)."""

    name = "max_logit"

    def _score(self, features: ClipFeatures) -> np.ndarray:
        return logits64(features, self.name).max(axis=1)


class Energy(ZooDetector):
    """Negative free energy ``T * logsumexp(z / T)`` (Liu et al., "Energy-based OOD detection", NeurIPS 2020)."""

    name = "energy"

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def _validate(self) -> None:
        check_positive(self.name, "temperature", self.temperature)

    def _score(self, features: ClipFeatures) -> np.ndarray:
        return energy(logits64(features, self.name), float(self.temperature))


class GradNorm(ZooDetector):
    """GradNorm (Huang, Geng & Li, NeurIPS 2021): ``|| d KL(u || softmax(z / T)) / d W ||_1`` for the head's weight
    ``W``, ``u`` uniform over the C classes.

    With ``z = W h + b`` the gradient is the outer product ``g h^T`` with ``g = (softmax(z / T) - 1/C) / T``, so its
    entrywise L1 norm is exactly ``||g||_1 * ||h||_1``: the score needs the head's input ``h`` (``layer``, the
    penultimate features) and the logits, not a backward pass per clip. ``head``, when given, is used to check
    at ``fit`` that ``layer`` really feeds it.
    """

    name = "gradnorm"

    def __init__(self, layer: str = "avgpool", temperature: float = 1.0, head: LinearHead | None = None):
        self.layer = layer
        self.temperature = temperature
        self.head = head

    def _validate(self) -> None:
        check_layer(self.name, self.layer)
        check_positive(self.name, "temperature", self.temperature)
        check_head(self.name, self.head)

    def _fit(self, train: ClipFeatures) -> None:
        self.n_features_in_ = layer64(train, self.layer, self.name).shape[1]
        check_feeds(self.name, self.head, train, self.layer)

    def _score(self, features: ClipFeatures) -> np.ndarray:
        h = layer64(features, self.layer, self.name, self.n_features_in_)
        temperature = float(self.temperature)
        p = softmax(logits64(features, self.name) / temperature, axis=1)
        g = np.abs(p - 1.0 / p.shape[1]).sum(axis=1) / temperature
        return g * np.abs(h).sum(axis=1)


class FeatureNorm(ZooDetector):
    """``||h||``, the L2 norm of the penultimate features (Dhamija et al. 2018): the score the objectosphere loss
    trains (large for known clips, near zero for outliers); without that training it is a weak baseline."""

    name = "feature_norm"

    def __init__(self, layer: str = "avgpool"):
        self.layer = layer

    def _validate(self) -> None:
        check_layer(self.name, self.layer)

    def _fit(self, train: ClipFeatures) -> None:
        self.n_features_in_ = layer64(train, self.layer, self.name).shape[1]

    def _score(self, features: ClipFeatures) -> np.ndarray:
        return np.linalg.norm(layer64(features, self.layer, self.name, self.n_features_in_), axis=1)
