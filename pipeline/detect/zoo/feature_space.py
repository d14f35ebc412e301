"""Baselines that model the training clips' features: Mahalanobis (tied Gaussian), deep KNN, and ViM.

All fit in float64 on copies of the training features; scores are computed in bounded chunks.
"""

from __future__ import annotations

import numpy as np

from pipeline.density import PCAReducer
from pipeline.density.covariance import CovarianceFit, precision_cholesky
from pipeline.density.gaussian import class_means, pooled_covariance
from pipeline.detect.features import ClipFeatures
from pipeline.detect.zoo.base import (
    LinearHead,
    ZooDetector,
    ZooError,
    check_feeds,
    check_head,
    check_layer,
    check_positive,
    energy,
    layer64,
    logits64,
)

_CHUNK_BYTES = 64 * 2**20
"""Largest float64 temporary (clips x training clips) the KNN search allocates at once."""


class Mahalanobis(ZooDetector):
    """Lee et al. (NeurIPS 2018): per layer, class means and one tied covariance; a clip's layer score is
    ``-min_k (x - mu_k)^T Sigma^-1 (x - mu_k)``.

    The layers are combined without OOD data (Lee et al.'s logistic regression needs it): each layer's score is
    standardised by its mean and standard deviation over the training clips and the standardised scores are summed.
    The covariance is the pooled within-class maximum-likelihood estimate, regularised by
    :func:`~pipeline.density.gaussian.pooled_covariance` (Ledoit-Wolf shrinkage when rank-deficient, then a jitter
    ladder; the records are in ``fit_report_``). Layers wider than ``max_features`` are first projected on their
    leading ``max_features`` principal axes (Lee et al. average each channel instead; the tapped features are
    already pooled and flattened). No input preprocessing (Lee et al.'s gradient step) is applied.
    """

    name = "mahalanobis"

    def __init__(self, layers: tuple[str, ...] | None = None, max_features: int = 512):
        self.layers = layers
        self.max_features = max_features

    @property
    def layer_used(self) -> str:
        layers = getattr(self, "layers_", None) or list(self.layers or ())
        return layers[0] if len(layers) == 1 else "all"

    def _validate(self) -> None:
        if self.layers is not None and (isinstance(self.layers, str) or not len(self.layers)):
            raise ZooError(f"{self.name}: layers must be a non-empty sequence of layer names or None, got "
                           f"{self.layers!r}")
        for layer in self.layers or ():
            check_layer(self.name, layer)
        check_positive(self.name, "max_features", self.max_features, integer=True)

    def _fit(self, train: ClipFeatures) -> None:
        self.layers_ = list(self.layers or train.layers)
        labels = np.asarray(train.labels)
        if labels.shape != (len(train),):
            raise ZooError(f"{self.name}: needs one label per training clip, got shape {labels.shape}")
        self.classes_, y_index = np.unique(labels, return_inverse=True)
        self.reducers_: dict[str, PCAReducer | None] = {}
        self.means_: dict[str, np.ndarray] = {}
        self.precision_cholesky_: dict[str, np.ndarray] = {}
        self.fit_report_: list[CovarianceFit] = []
        train_scores = {}
        for layer in self.layers_:
            X = layer64(train, layer, self.name)
            reducer = None
            if X.shape[1] > self.max_features:
                reducer = PCAReducer(variance=1.0, pool_factor=1, max_components=int(self.max_features)).fit(X)
                X = reducer.transform(X)
            means, _ = class_means(X, y_index, len(self.classes_))
            _, chol, record = pooled_covariance(X, y_index, means, label=f"{self.name} {layer}")
            self.reducers_[layer], self.means_[layer] = reducer, means
            self.precision_cholesky_[layer] = precision_cholesky(chol)
            self.fit_report_.append(record)
            train_scores[layer] = -self._distances(layer, X).min(axis=1)
        self.score_mean_ = {layer: float(s.mean()) for layer, s in train_scores.items()}
        self.score_std_ = {layer: float(s.std()) or 1.0 for layer, s in train_scores.items()}

    def _distances(self, layer: str, X: np.ndarray) -> np.ndarray:
        """``(N, C)`` squared Mahalanobis distances to every class mean (centred first, to limit cancellation)."""
        means, factor = self.means_[layer], self.precision_cholesky_[layer]
        centre = means.mean(axis=0)
        z, m = (X - centre) @ factor, (means - centre) @ factor
        d2 = (z * z).sum(axis=1)[:, None] - 2.0 * z @ m.T + (m * m).sum(axis=1)[None, :]
        return np.maximum(d2, 0.0)

    def layer_scores(self, features: ClipFeatures) -> dict[str, np.ndarray]:
        """Each layer's raw score ``-min_k d_M(x, mu_k)^2`` (not standardised)."""
        if not hasattr(self, "means_"):
            raise ZooError(f"{self.name} is not fitted: call fit(train) first")
        out = {}
        for layer in self.layers_:
            reducer = self.reducers_[layer]
            n_features = reducer.n_features_in_ if reducer is not None else self.means_[layer].shape[1]
            X = layer64(features, layer, self.name, n_features)
            out[layer] = -self._distances(layer, reducer.transform(X) if reducer is not None else X).min(axis=1)
        return out

    def _score(self, features: ClipFeatures) -> np.ndarray:
        scores = self.layer_scores(features)
        return sum((scores[layer] - self.score_mean_[layer]) / self.score_std_[layer] for layer in self.layers_)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    return X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-10)


class KNN(ZooDetector):
    """Deep nearest neighbours (Sun et al., ICML 2022): the negative Euclidean distance from a clip's L2-normalised
    ``layer`` features (the penultimate layer in the paper) to its ``k``-th nearest normalised training clip.

    The search is exact: cosine similarities against the whole training bank, a chunk of clips at a time
    (``k`` is capped by the number of training clips).
    """

    name = "knn"

    def __init__(self, layer: str = "avgpool", k: int = 50):
        self.layer = layer
        self.k = k

    def _validate(self) -> None:
        check_layer(self.name, self.layer)
        check_positive(self.name, "k", self.k, integer=True)

    def _fit(self, train: ClipFeatures) -> None:
        self.bank_ = _unit_rows(layer64(train, self.layer, self.name))
        self.n_features_in_ = self.bank_.shape[1]
        self.k_ = min(int(self.k), self.bank_.shape[0])

    def _score(self, features: ClipFeatures) -> np.ndarray:
        queries = _unit_rows(layer64(features, self.layer, self.name, self.n_features_in_))
        rows = max(1, _CHUNK_BYTES // (8 * self.bank_.shape[0]))
        out = np.empty(queries.shape[0])
        for start in range(0, queries.shape[0], rows):
            similarity = queries[start:start + rows] @ self.bank_.T
            kth = -np.partition(-similarity, self.k_ - 1, axis=1)[:, self.k_ - 1]
            out[start:start + rows] = -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
        return out


class ViM(ZooDetector):
    """Virtual-logit matching (Wang et al., CVPR 2022): ``energy(z) - alpha * ||(h - u) P_perp||``.

    ``h`` are the penultimate features (``layer``, the head's input), ``u = -pinv(W) b`` the origin at which the
    head ``z = W h + b`` has zero logits (the training mean without ``head``), ``P_perp`` projects onto the
    orthogonal complement of the ``dim`` leading eigenvectors of the uncentred covariance of ``h - u`` on training
    clips, and ``alpha`` = mean training max-logit / mean training residual norm. ``energy`` is
    ``logsumexp(z)``. ``dim`` defaults to the paper's rule: 1000 for ``D >= 2048``, 512 for ``D >= 768``, else
    ``D // 2``.
    """

    name = "vim"

    def __init__(self, layer: str = "avgpool", head: LinearHead | None = None, dim: int | None = None):
        self.layer = layer
        self.head = head
        self.dim = dim

    def _validate(self) -> None:
        check_layer(self.name, self.layer)
        check_head(self.name, self.head)
        if self.dim is not None:
            check_positive(self.name, "dim", self.dim, integer=True)

    def _fit(self, train: ClipFeatures) -> None:
        h = layer64(train, self.layer, self.name)
        d = h.shape[1]
        check_feeds(self.name, self.head, train, self.layer)
        if self.head is not None:
            self.origin_ = -np.linalg.pinv(self.head.weight) @ self.head.bias
        else:
            self.origin_ = h.mean(axis=0)
        self.dim_ = int(self.dim) if self.dim is not None else (1000 if d >= 2048 else 512 if d >= 768 else d // 2)
        if not 1 <= self.dim_ < d:
            raise ZooError(f"{self.name}: dim must be in [1, {d - 1}] for {d} features, got {self.dim_}")
        centred = h - self.origin_
        _, vectors = np.linalg.eigh(centred.T @ centred / h.shape[0])  # ascending eigenvalues
        self.null_space_ = vectors[:, : d - self.dim_]
        self.n_features_in_ = d
        residual = np.linalg.norm(centred @ self.null_space_, axis=1)
        self.alpha_ = float(logits64(train, self.name).max(axis=1).mean() / max(residual.mean(), 1e-12))

    def _score(self, features: ClipFeatures) -> np.ndarray:
        h = layer64(features, self.layer, self.name, self.n_features_in_)
        residual = np.linalg.norm((h - self.origin_) @ self.null_space_, axis=1)
        return energy(logits64(features, self.name)) - self.alpha_ * residual
