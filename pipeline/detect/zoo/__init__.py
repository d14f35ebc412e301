"""A zoo of standard out-of-distribution baselines, to compare the bundle's densities with (``clipwatch evaluate``).

===============  ========================================================================  ===================
name             score (higher = more in-distribution)                                      reads
===============  ========================================================================  ===================
``msp``          ``max softmax(z)`` (Hendrycks & Gimpel 2017)                               logits
``max_logit``    ``max z`` (Hendrycks et al. 2022)                                          logits
``energy``       ``T logsumexp(z / T)`` (Liu et al. 2020)                                   logits
``odin``         ``max softmax(f(x') / T)``, ``x'`` perturbed by the gradient sign (2018)    model + pixels
``mahalanobis``  sum over layers of standardised ``-min_k d_M(x, mu_k)^2`` (Lee et al.)     tapped layers
``knn``          ``-||h/|h| - k-th nearest training h/|h| ||`` (Sun et al. 2022)             penultimate
``vim``          ``logsumexp(z) - alpha ||(h - u) P_perp||`` (Wang et al. 2022)             penultimate + head
``gradnorm``     ``||d KL(u || softmax(z)) / d W||_1`` (Huang et al. 2021)                  penultimate + logits
``feature_norm`` ``||h||`` (Dhamija et al. 2018; what the objectosphere loss trains)       penultimate
``gradient``     ``sum_l z(cos(g_l, mean train g_l)) - z(log||g_l||)`` (Kwon et al. 2020)   model + pixels
``heatmap``      ``-mean`` of a decoder's OOD heatmap from feature maps (Hornauer et al.)    model + pixels
===============  ========================================================================  ===================

Example::

    from pipeline.detect.zoo import KNN, ViM, linear_head
    knn = KNN(layer="avgpool").fit(train)            # train: ClipFeatures of in-distribution training clips
    vim = ViM(layer="avgpool", head=linear_head(model)).fit(train)
    scores = knn.score(test)                         # (N,) float64

ODIN, ``gradient`` and ``heatmap`` score pixel clips through the model (``needs_clips``); the last two are also fitted
on training clips (``needs_training_clips``): ``GradientDetector().fit_clips(model, train_clips, normalize)``.
"""

from __future__ import annotations

import difflib

from pipeline.detect.zoo.base import LinearHead, ZooDetector, ZooError, energy, feeding_layer, linear_head
from pipeline.detect.zoo.feature_space import KNN, Mahalanobis, ViM
from pipeline.detect.zoo.gradient import GradientDetector, default_gradient_layers
from pipeline.detect.zoo.heatmap import HeatmapDetector
from pipeline.detect.zoo.odin import ODIN
from pipeline.detect.zoo.output import MSP, Energy, FeatureNorm, GradNorm, MaxLogit

DETECTORS: dict[str, type[ZooDetector]] = {
    cls.name: cls
    for cls in (MSP, MaxLogit, Energy, ODIN, Mahalanobis, KNN, ViM, GradNorm, FeatureNorm, GradientDetector,
                HeatmapDetector)
}
"""Every detector of the zoo by name, in the order reports list them."""

PENULTIMATE = ("knn", "vim", "gradnorm", "feature_norm")
"""Detectors that read the classifier head's input features."""


def parse_detectors(text: str) -> tuple[str, ...]:
    """``"all"``, ``"none"`` or a comma-separated list of zoo names, as a tuple in the zoo's order."""
    text = text.strip().lower()
    if text == "all":
        return tuple(DETECTORS)
    if text in ("none", ""):
        return ()
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in DETECTORS:
            close = difflib.get_close_matches(name, list(DETECTORS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ZooError(f"unknown detector {name!r}{hint}; choose from {', '.join(DETECTORS)}, all or none")
    return tuple(name for name in DETECTORS if name in names)


def build_zoo(names, *, layers: list[str], head: LinearHead | None,
              penultimate: str | None) -> tuple[dict[str, ZooDetector], dict[str, str]]:
    """Unfitted detectors ``names`` with their default parameters, and ``{name: reason}`` for those that cannot run.

    ``layers`` are the tapped layers Mahalanobis models; ``penultimate`` the one that feeds ``head``
    (:func:`feeding_layer`), without which KNN, ViM and GradNorm are left out.
    """
    detectors: dict[str, ZooDetector] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in PENULTIMATE and penultimate is None:
            skipped[name] = "no tapped layer feeds the classifier head (tap its input, e.g. avgpool)"
        elif name == "mahalanobis":
            detectors[name] = Mahalanobis(layers=tuple(layers))
        elif name in ("knn", "feature_norm"):
            detectors[name] = DETECTORS[name](layer=penultimate)
        elif name in ("vim", "gradnorm"):
            detectors[name] = DETECTORS[name](layer=penultimate, head=head)
        else:
            detectors[name] = DETECTORS[name]()
    return detectors, skipped


__all__ = [
    "DETECTORS",
    "KNN",
    "MSP",
    "ODIN",
    "Energy",
    "FeatureNorm",
    "GradNorm",
    "GradientDetector",
    "HeatmapDetector",
    "LinearHead",
    "Mahalanobis",
    "MaxLogit",
    "ViM",
    "ZooDetector",
    "ZooError",
    "build_zoo",
    "default_gradient_layers",
    "energy",
    "feeding_layer",
    "linear_head",
    "parse_detectors",
]
