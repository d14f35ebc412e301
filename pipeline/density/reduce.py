"""Feature reduction before density fitting: average pooling (factor 4) then PCA keeping 99.5 % of the variance."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator

from pipeline.density.base import check_features
from pipeline.density.errors import DensityError
from pipeline.density.pooling import pool_features


class PCAReducer(BaseEstimator):
    """Pool conv maps by ``pool_factor`` and project onto the principal axes keeping ``variance`` of the variance.

    ``fit`` takes ``(N, C, *dims)`` conv maps or ``(N, D)`` features (already pooled ones, e.g. from a
    ``FeatureTap``, are left as they are when ``pool_factor=1``). PCA is fitted in float64 by SVD of a centred
    copy; the caller's array is never modified. ``variance=1.0`` keeps every non-degenerate axis.

    Fitted attributes: ``mean_ (D,)``, ``components_ (k, D)``, ``explained_variance_ (k,)``,
    ``explained_variance_ratio_ (k,)``, ``n_components_``, ``n_features_in_``.
    """

    _array_attributes: ClassVar[tuple[str, ...]] = ("mean_", "components_", "explained_variance_", "explained_variance_ratio_")

    def __init__(self, variance: float = 0.995, pool_factor: int = 4, max_components: int | None = None):
        self.variance = variance
        self.pool_factor = pool_factor
        self.max_components = max_components

    def _flatten(self, X) -> np.ndarray:
        arr = np.asarray(X)
        if arr.ndim > 2:
            arr = pool_features(arr, self.pool_factor)
        return arr

    def fit(self, X, y=None):
        if not 0.0 < self.variance <= 1.0:
            raise DensityError(f"variance must be in (0, 1], got {self.variance}")
        flat = check_features(self._flatten(X))
        if flat.shape[0] < 2:
            raise DensityError(f"PCA needs at least 2 samples, got {flat.shape[0]}")
        self.n_features_in_ = flat.shape[1]
        self.mean_ = flat.mean(axis=0, dtype=np.float64)
        centred = flat.astype(np.float64) - self.mean_
        _, singular, vt = linalg.svd(centred, full_matrices=False, check_finite=False)
        explained = singular**2 / (flat.shape[0] - 1)
        total = explained.sum()
        if total <= 0.0:
            raise DensityError("features have zero variance: nothing for PCA to keep")
        ratio = explained / total
        keep = int(np.searchsorted(np.cumsum(ratio), self.variance - 1e-12) + 1)
        keep = min(keep, int(np.sum(explained > total * 1e-12)) or 1)
        if self.max_components is not None:
            keep = min(keep, int(self.max_components))
        self.n_components_ = keep
        self.components_ = vt[:keep]
        self.explained_variance_ = explained[:keep]
        self.explained_variance_ratio_ = ratio[:keep]
        return self

    def transform(self, X) -> np.ndarray:
        """Project ``X`` (pooled and flattened as in ``fit``) onto the kept axes; float64 result."""
        if not hasattr(self, "components_"):
            raise DensityError("this PCAReducer is not fitted yet: call fit(X) first")
        flat = check_features(self._flatten(X), n_features=self.n_features_in_)
        return (flat - self.mean_) @ self.components_.T

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).transform(X)
