"""The estimator contract shared by the class-conditional densities (scikit-learn style)."""

from __future__ import annotations

from numbers import Real
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from pipeline.density.covariance import (
    CovarianceFit,
    ShrinkageCache,
    covariance_from_precision_cholesky,
    select_shrinkage,
)
from pipeline.density.errors import DensityError
from pipeline.density.scoring import ComponentScorer


def check_features(X, *, n_features: int | None = None, name: str = "X") -> np.ndarray:
    """Return ``X`` as a 2-D float array (not copied when already one), or raise a one-line ``ValueError``."""
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise DensityError(f"{name} is not a numeric array: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise DensityError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DensityError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DensityError(f"{name} is empty: shape {arr.shape}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise DensityError(
            f"{name} has NaN or inf in {bad_rows.size} of {arr.shape[0]} rows (first: row {int(bad_rows[0])})"
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise DensityError(f"{name} has {arr.shape[1]} features, but the model was fitted with {n_features}")
    return arr


def check_labels(y, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes, class index per sample)``; ``y=None`` means one class (one-class modelling)."""
    if y is None:
        return np.array([0]), np.zeros(n_samples, dtype=np.int64)
    y = np.asarray(y)
    if y.ndim != 1:
        raise DensityError(f"y must be 1-D, got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise DensityError(f"y has {y.shape[0]} labels but X has {n_samples} samples")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DensityError("y contains NaN or inf")
    classes, index = np.unique(y, return_inverse=True)
    return classes, index.astype(np.int64)


class ClassConditionalDensity(BaseEstimator):
    """Base class: ``fit(X, y)``, ``class_log_likelihood``, ``score_samples``, ``predict``.

    Subclasses implement ``_fit(X, y_index, n_classes, shrinkage_cache)`` setting their fitted attributes and
    ``_components()`` returning ``(means, precisions_cholesky, log_weights, component_class)``.
    """

    _array_attributes: ClassVar[tuple[str, ...]] = ()
    _derived_attributes: ClassVar[dict[str, str]] = {}
    """Array attributes that ``save`` leaves out: covariance name -> the precision factor it is recomputed from."""

    def _restore_derived(self) -> None:
        """Recompute the attributes of ``_derived_attributes`` after loading."""
        for covariance, factor in self._derived_attributes.items():
            setattr(self, covariance, covariance_from_precision_cholesky(getattr(self, factor)))

    def fit(self, X, y=None, *, shrinkage_cache: ShrinkageCache | None = None):
        """Fit one density per class of ``y`` (all samples form one class when ``y`` is None).

        ``shrinkage_cache`` is shared by densities fitted on the same ``(X, y)`` so that a cross-validated
        ``shrinkage`` is chosen once (:class:`~pipeline.density.covariance.ShrinkageCache`); results are the same.
        """
        X = check_features(X)
        classes, y_index = check_labels(y, X.shape[0])
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.center_ = X.mean(axis=0, dtype=np.float64)
        self.fit_report_: list[CovarianceFit] = []
        self._fit(X, y_index, len(classes), shrinkage_cache)
        self._scorer = None
        return self

    def class_log_likelihood(self, X) -> np.ndarray:
        """``(N, C)`` normalised log-density ``log p(x | class k)``, columns ordered as ``classes_``."""
        scorer = self._get_scorer()
        return scorer.class_log_likelihood(check_features(X, n_features=self.n_features_in_))

    def score_samples(self, X) -> np.ndarray:
        """``(N,)`` confidence: the largest class log-likelihood (higher = more in-distribution)."""
        return self.class_log_likelihood(X).max(axis=1)

    def predict(self, X) -> np.ndarray:
        """The likelihood classifier: the class whose density gives ``x`` the highest likelihood."""
        return self.classes_[np.argmax(self.class_log_likelihood(X), axis=1)]

    @property
    def regularised_classes_(self) -> list:
        """Labels of the classes whose covariance was shrunk (by ``shrinkage_`` or, for a class with no more
        samples than dimensions, Ledoit-Wolf) or jittered during ``fit``."""
        return sorted({r.label for r in self.fit_report_ if r.regularised})

    def _get_scorer(self) -> ComponentScorer:
        if not hasattr(self, "classes_"):
            raise DensityError(f"this {type(self).__name__} is not fitted yet: call fit(X, y) first")
        scorer = getattr(self, "_scorer", None)
        if scorer is None or scorer.dtype != np.dtype(self.scoring_dtype):
            means, prec, log_weights, component_class = self._components()
            scorer = ComponentScorer(
                means, prec, log_weights, component_class, len(self.classes_), self.center_, self.scoring_dtype
            )
            self._scorer = scorer
        return scorer

    def _fit_shrinkage(self, X: np.ndarray, y_index: np.ndarray, n_classes: int,
                       cache: ShrinkageCache | None = None) -> float:
        """Set ``shrinkage_`` (toward the pooled covariance) from the ``shrinkage`` parameter: a fixed intensity
        in [0, 1], or ``"cv"`` for :func:`select_shrinkage` (its held-out scores go to ``shrinkage_scores_``, with
        ``None`` for a singular grid value). One class has no pooled covariance to shrink toward: 0."""
        setting = self.shrinkage
        self.shrinkage_scores_: list[float | None] = []
        if isinstance(setting, str) and setting == "cv":
            self.shrinkage_, scores = select_shrinkage(X, y_index, n_classes, folds=self.cv_folds, cache=cache)
            self.shrinkage_scores_ = [float(v) if np.isfinite(v) else None for v in scores]
        elif isinstance(setting, Real) and not isinstance(setting, bool) and 0.0 <= float(setting) <= 1.0:
            self.shrinkage_ = float(setting)
        else:
            raise DensityError(f"shrinkage must be 'cv' or a number in [0, 1], got {setting!r}")
        if n_classes < 2:
            self.shrinkage_ = 0.0
        return self.shrinkage_

    def _class_label(self, k: int) -> str:
        label = self.classes_[k]
        return f"class {label.item() if hasattr(label, 'item') else label}"

    def _fit(self, X: np.ndarray, y_index: np.ndarray, n_classes: int,
             shrinkage_cache: ShrinkageCache | None = None) -> None:
        raise NotImplementedError

    def _components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError
