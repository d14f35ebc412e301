"""Vectorised log-likelihood of many Gaussian components at once.

All three densities reduce to a table of components ``j`` (a class ``k(j)``, a log-weight, a mean and an
upper precision factor ``P_j`` with ``P_j P_j^T = inverse(Sigma_j)``). This module scores a batch of samples
against every component of every class with large matrix products, then log-sum-exps components per class.

Two kernels:

* ``float64`` (exact): ``|| (x - mu_j) P_j ||^2`` for all ``j`` with one product ``X @ [P_1 ... P_J]``.
* ``float32`` (fast): the expanded quadratic form ``z^T L_j z - 2 z^T L_j m_j + m_j^T L_j m_j`` with
  ``L_j = P_j P_j^T``, ``z = x - c`` and ``m_j = mu_j - c`` (``c`` the training mean). The quadratic term is
  one product of the upper-triangle outer products ``(N, d(d+1)/2)`` with ``(d(d+1)/2, J)``: half the flops
  of the Cholesky form, no ``N x J x d`` temporary. Its cancellation error grows with the distance between
  ``c`` and the component and with the component's condition number; relative to the score it matters
  for the classes a sample is close to. Every class within ``REFINE_MARGIN`` nats of a sample's best is
  therefore recomputed in the Cholesky form ``|| (x - mu_j) P_j ||^2``, which keeps ``score_samples``,
  ``predict`` and the competitive classes exact to float32 rounding.

With a tied covariance every class shares ``P``, so samples are whitened once and distances are one
``(N, d) @ (d, C)`` product in both kernels.
"""

from __future__ import annotations

import numpy as np

from pipeline.density.errors import DensityError

LOG_2PI = float(np.log(2.0 * np.pi))
_CHUNK_BYTES = 32 * 2**20
REFINE_MARGIN = 50.0


class ComponentScorer:
    """Precomputed, immutable scoring tables for ``class_log_likelihood``; built once after ``fit``."""

    def __init__(
        self,
        means: np.ndarray,
        precisions_cholesky: np.ndarray,
        log_weights: np.ndarray,
        component_class: np.ndarray,
        n_classes: int,
        center: np.ndarray,
        dtype: str = "float32",
    ) -> None:
        if dtype not in ("float32", "float64"):
            raise DensityError(f"scoring_dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.n_classes = int(n_classes)
        self.component_class = np.asarray(component_class, dtype=np.int64)
        if np.any(np.diff(self.component_class) < 0):
            raise DensityError("components must be sorted by class")
        self.class_starts = np.searchsorted(self.component_class, np.arange(self.n_classes))
        self.single_component = self.component_class.shape[0] == self.n_classes
        means = np.asarray(means, dtype=np.float64)
        prec = np.asarray(precisions_cholesky, dtype=np.float64)
        self.n_features = means.shape[1]
        self.tied = prec.ndim == 2
        d = self.n_features
        center = np.asarray(center, dtype=np.float64)
        shifted = means - center
        self.center = center.astype(self.dtype)
        if self.tied:
            log_det = np.sum(np.log(np.diag(prec)))
            self.whiten = prec.astype(self.dtype)
            white_means = shifted @ prec
            self.white_means_t = np.ascontiguousarray(white_means.T).astype(self.dtype)
            self.half_sq_norms = (0.5 * np.sum(white_means**2, axis=1)).astype(self.dtype)
            log_dets = np.full(means.shape[0], log_det)
        else:
            log_dets = np.sum(np.log(np.diagonal(prec, axis1=1, axis2=2)), axis=1)
            if self.dtype == np.float64:
                self.stacked_factors = np.ascontiguousarray(prec.transpose(1, 0, 2).reshape(d, -1))
                self.stacked_offsets = np.einsum("jd,jde->je", shifted, prec).reshape(-1)
            else:
                # Whiten by the mean precision first: the per-component quadratic forms become close to the
                # identity, which keeps the float32 expansion well conditioned.
                mean_precision = np.mean(prec @ prec.transpose(0, 2, 1), axis=0)
                whiten = np.linalg.cholesky(mean_precision)
                prec = np.linalg.solve(whiten, prec.reshape(-1, d, d).transpose(1, 0, 2).reshape(d, -1))
                prec = prec.reshape(d, -1, d).transpose(1, 0, 2)
                shifted = shifted @ whiten
                self.whiten = whiten.astype(self.dtype)
                precision = prec @ prec.transpose(0, 2, 1)
                rows, cols = np.triu_indices(d)
                pair_weight = np.where(rows == cols, 1.0, 2.0)
                self.pair_rows, self.pair_cols = rows, cols
                self.quadratic = np.ascontiguousarray((precision[:, rows, cols] * pair_weight).T).astype(self.dtype)
                linear = np.einsum("jde,je->jd", precision, shifted)
                self.linear_t = np.ascontiguousarray(-2.0 * linear.T).astype(self.dtype)
                self.constant = np.einsum("jd,jd->j", shifted, linear).astype(self.dtype)
                self.shifted_means = shifted.astype(self.dtype)
                self.factors = prec.astype(self.dtype)
        self.offsets = (np.asarray(log_weights, dtype=np.float64) + log_dets - 0.5 * d * LOG_2PI).astype(self.dtype)

    def class_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """``(N, C)`` log p(x | class) in the scorer's dtype; ``X`` must already be validated ``(N, d)``."""
        n = X.shape[0]
        out = np.empty((n, self.n_classes), dtype=self.dtype)
        width = self._row_width()
        step = max(1, _CHUNK_BYTES // (width * self.dtype.itemsize))
        for start in range(0, n, step):
            block = self._centre(X[start : start + step])
            out[start : start + step] = self._reduce_classes(self._component_log_density(block))
        if self.dtype == np.float32 and not self.tied:
            self._refine_near_classes(X, out)
        return out

    def _refine_near_classes(self, X: np.ndarray, out: np.ndarray) -> None:
        """Recompute, in the Cholesky form, every class within ``REFINE_MARGIN`` nats of a sample's best."""
        near = out >= out.max(axis=1, keepdims=True) - REFINE_MARGIN
        ends = np.append(self.class_starts[1:], self.component_class.shape[0])
        for k in np.flatnonzero(near.any(axis=0)):
            rows = np.flatnonzero(near[:, k])
            z = self._centre(X[rows])
            components = range(self.class_starts[k], ends[k])
            log_density = np.empty((rows.size, len(components)), dtype=self.dtype)
            for column, j in enumerate(components):
                y = (z - self.shifted_means[j]) @ self.factors[j]
                log_density[:, column] = self.offsets[j] - 0.5 * np.einsum("nd,nd->n", y, y)
            peak = log_density.max(axis=1)
            out[rows, k] = peak + np.log(np.exp(log_density - peak[:, None]).sum(axis=1))

    def _centre(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, dtype=self.dtype) - self.center
        if not self.tied and self.dtype == np.float32:
            z = z @ self.whiten
        return z

    def _row_width(self) -> int:
        if self.tied:
            return self.n_features + self.n_classes
        if self.dtype == np.float64:
            return self.stacked_factors.shape[1]
        return self.quadratic.shape[0]

    def _component_log_density(self, z: np.ndarray) -> np.ndarray:
        if self.tied:
            white = z @ self.whiten
            half_maha = 0.5 * np.einsum("nd,nd->n", white, white)[:, None] - white @ self.white_means_t
            half_maha += self.half_sq_norms
        elif self.dtype == np.float64:
            projected = z @ self.stacked_factors
            projected -= self.stacked_offsets
            np.square(projected, out=projected)
            half_maha = 0.5 * projected.reshape(z.shape[0], -1, self.n_features).sum(axis=2)
        else:
            pairs = z[:, self.pair_rows]
            pairs *= z[:, self.pair_cols]
            maha = pairs @ self.quadratic
            maha += z @ self.linear_t
            maha += self.constant
            np.maximum(maha, 0.0, out=maha)
            half_maha = 0.5 * maha
        return self.offsets - half_maha

    def _reduce_classes(self, log_density: np.ndarray) -> np.ndarray:
        if self.single_component:
            return log_density
        peak = np.maximum.reduceat(log_density, self.class_starts, axis=1)
        expanded = np.exp(log_density - peak[:, self.component_class])
        return peak + np.log(np.add.reduceat(expanded, self.class_starts, axis=1))
