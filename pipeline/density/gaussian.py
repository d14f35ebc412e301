"""Class-conditional Gaussians: tied covariance (Mahalanobis baseline) and separate covariance per class (QDA)."""

from __future__ import annotations

import numpy as np

from pipeline.density.base import ClassConditionalDensity
from pipeline.density.covariance import empirical_covariance, precision_cholesky, regularised_cholesky


def class_means(X: np.ndarray, y_index: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(means (C, d), counts (C,))`` in float64."""
    counts = np.bincount(y_index, minlength=n_classes)
    sums = np.zeros((n_classes, X.shape[1]))
    np.add.at(sums, y_index, X)
    return sums / counts[:, None], counts


def pooled_covariance(X: np.ndarray, y_index: np.ndarray, means: np.ndarray, label: str = "pooled"):
    """Regularised maximum-likelihood within-class covariance pooled over classes (divide by N)."""
    residuals = np.asarray(X, dtype=np.float64) - means[y_index]
    cov = residuals.T @ residuals / X.shape[0]
    degrees = X.shape[0] - means.shape[0] + 1
    return regularised_cholesky(cov, n_samples=degrees, label=label, samples=residuals)


class TiedGaussian(ClassConditionalDensity):
    """Gaussian per class with one covariance shared by all classes (Lee et al.'s Mahalanobis detector).

    Fitted attributes: ``classes_``, ``means_ (C, d)``, ``covariance_ (d, d)``, ``precision_cholesky_``,
    ``fit_report_`` (one record for the pooled covariance).
    """

    _array_attributes = ("center_", "means_", "covariance_", "precision_cholesky_")
    _derived_attributes = {"covariance_": "precision_cholesky_"}

    def __init__(self, scoring_dtype: str = "float32"):
        self.scoring_dtype = scoring_dtype

    def _fit(self, X, y_index, n_classes, shrinkage_cache=None):  # no shrinkage to choose
        self.means_, _ = class_means(X, y_index, n_classes)
        cov, chol, record = pooled_covariance(X, y_index, self.means_)
        self.covariance_ = cov
        self.precision_cholesky_ = precision_cholesky(chol)
        self.fit_report_.append(record)

    def _components(self):
        n = len(self.classes_)
        return self.means_, self.precision_cholesky_, np.zeros(n), np.arange(n)


class SeparateGaussian(ClassConditionalDensity):
    """Gaussian per class with its own full covariance (QDA), the paper's best detector.

    Each class covariance is shrunk toward the pooled covariance, ``(1 - a) S_k + a S_pooled``, with ``a`` chosen
    by class-stratified cross-validation of the held-out likelihood (``shrinkage="cv"``, the default) or fixed
    (``shrinkage=0`` is the plain maximum-likelihood fit of the paper; classes with no more samples than
    dimensions are then shrunk with the Ledoit-Wolf intensity). ``shrinkage_`` is the intensity used and
    ``fit_report_`` has one record per class (see :mod:`pipeline.density.covariance`).
    """

    _array_attributes = ("center_", "means_", "covariances_", "precisions_cholesky_")
    _derived_attributes = {"covariances_": "precisions_cholesky_"}

    def __init__(self, shrinkage: float | str = "cv", cv_folds: int = 5, scoring_dtype: str = "float32"):
        self.shrinkage = shrinkage
        self.cv_folds = cv_folds
        self.scoring_dtype = scoring_dtype

    def _fit(self, X, y_index, n_classes, shrinkage_cache=None):
        self.means_, counts = class_means(X, y_index, n_classes)
        intensity = self._fit_shrinkage(X, y_index, n_classes, shrinkage_cache)
        target = None
        if n_classes > 1 and (intensity > 0 or np.any(counts <= X.shape[1])):
            target, _, pooled_record = pooled_covariance(X, y_index, self.means_)
            if pooled_record.regularised:
                self.fit_report_.append(pooled_record)
        d = X.shape[1]
        self.covariances_ = np.empty((n_classes, d, d))
        self.precisions_cholesky_ = np.empty((n_classes, d, d))
        for k in range(n_classes):
            members = X[y_index == k]
            cov = empirical_covariance(members, self.means_[k])
            cov, chol, record = regularised_cholesky(
                cov, n_samples=members.shape[0], label=self._class_label(k), samples=members, target=target,
                intensity=intensity,
            )
            self.covariances_[k] = cov
            self.precisions_cholesky_[k] = precision_cholesky(chol)
            self.fit_report_.append(record)

    def _components(self):
        n = len(self.classes_)
        return self.means_, self.precisions_cholesky_, np.zeros(n), np.arange(n)
