"""Covariance estimation and its regularisation path, in float64.

Every covariance a density uses goes through :func:`regularised_cholesky`, which applies, in order:

1. **Shrinkage** ``S <- (1 - a) S + a T`` toward a target ``T``: the pooled covariance of all classes when
   given (regularised discriminant analysis), else ``mean(diag S) * I``. The intensity ``a`` is the caller's
   (e.g. cross-validated by :func:`select_shrinkage`); an estimate that is rank-deficient by construction
   (``n_samples <= n_features``) gets at least the Ledoit-Wolf intensity (``a = 1`` for a single sample), since
   an intensity chosen for the large classes would leave a class of a few samples far too confident.
2. **A jitter ladder** when the matrix is still not positive definite or is ill-conditioned
   (condition number above ``max_condition``): ``S + eps * scale * I`` for ``eps = 1e-10, 1e-9, ...``
   until the Cholesky factorisation succeeds and the condition number is acceptable.

The factorisation is computed once and returned with a :class:`CovarianceFit` record, which the
densities collect in their ``fit_report_`` so users can see which classes needed help.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy import linalg
from sklearn.covariance import ledoit_wolf_shrinkage

from pipeline.density.errors import DensityError

MAX_CONDITION = 1e10
SHRINKAGE_GRID = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
"""Intensities :func:`select_shrinkage` tries."""
_JITTER_LADDER = tuple(10.0**k for k in range(-10, 1))


@dataclass
class CovarianceFit:
    """How one covariance was estimated: what regularisation, if any, it needed."""

    label: str
    n_samples: int
    n_features: int
    shrinkage: float = 0.0
    shrinkage_target: str = ""
    jitter: float = 0.0
    condition: float = float("nan")
    note: str = ""

    @property
    def regularised(self) -> bool:
        return self.shrinkage > 0.0 or self.jitter > 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def empirical_covariance(X: np.ndarray, mean: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Maximum-likelihood covariance ``sum w (x - m)(x - m)^T / sum w`` in float64; ``X`` is not modified."""
    centred = np.asarray(X, dtype=np.float64) - mean
    if weights is None:
        return centred.T @ centred / centred.shape[0]
    return (centred * weights[:, None]).T @ centred / weights.sum()


def regularised_cholesky(
    cov: np.ndarray,
    *,
    n_samples: int,
    label: str,
    samples: np.ndarray | None = None,
    target: np.ndarray | None = None,
    intensity: float = 0.0,
    max_condition: float = MAX_CONDITION,
) -> tuple[np.ndarray, np.ndarray, CovarianceFit]:
    """Return ``(covariance, lower Cholesky factor, record)`` after the documented regularisation path.

    ``intensity`` > 0 shrinks toward ``target`` (default: scaled identity) by that much; a rank-deficient
    estimate is shrunk by at least the Ledoit-Wolf intensity estimated from ``samples`` (centred or not).
    """
    cov = np.array(cov, dtype=np.float64)
    d = cov.shape[0]
    record = CovarianceFit(label=label, n_samples=int(n_samples), n_features=d)
    if n_samples <= d:
        intensity = max(intensity, _ledoit_wolf_intensity(samples))
    if intensity > 0.0:
        cov = _shrink(cov, target, record, intensity)
    scale = float(np.mean(np.diag(cov)))
    if not np.isfinite(scale) or scale <= 0.0:
        scale = 1.0 if target is None else float(np.mean(np.diag(target))) or 1.0
    for eps in (0.0, *_JITTER_LADDER):
        candidate = cov if eps == 0.0 else cov + (eps * scale) * np.eye(d)
        try:
            chol = linalg.cholesky(candidate, lower=True, check_finite=False)
        except linalg.LinAlgError:
            continue
        diag = np.diag(chol)
        condition = float((diag.max() / diag.min()) ** 2) if diag.min() > 0 else np.inf
        if condition <= max_condition:
            record.jitter = eps * scale
            record.condition = condition
            return candidate, chol, record
    raise DensityError(f"covariance of {label} could not be regularised (non-finite or degenerate features)")


def _shrink(cov: np.ndarray, target: np.ndarray | None, record: CovarianceFit, intensity: float) -> np.ndarray:
    d = cov.shape[0]
    intensity = min(intensity, 1.0)
    if target is None:
        mu = float(np.trace(cov)) / d
        target = mu * np.eye(d)
        record.shrinkage_target = "scaled_identity"
    else:
        record.shrinkage_target = "pooled_covariance"
    record.shrinkage = intensity
    return (1.0 - intensity) * cov + intensity * target


def _ledoit_wolf_intensity(samples: np.ndarray | None) -> float:
    """Ledoit-Wolf intensity in [1e-3, 1]; 1 without at least two samples or when it is not finite."""
    if samples is None or samples.shape[0] < 2:
        return 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        intensity = float(ledoit_wolf_shrinkage(np.asarray(samples, dtype=np.float64), assume_centered=False))
    return min(max(intensity, 1e-3), 1.0) if np.isfinite(intensity) else 1.0


def class_folds(y_index: np.ndarray, n_classes: int, folds: int) -> np.ndarray:
    """Fold of every sample: each class cut into ``folds`` contiguous blocks in sample order.

    Every fold holds every class that has at least ``folds`` samples, and neighbouring samples (the clips of one
    video, stored one after another) mostly land in the same fold, so held-out scores are not inflated by
    near-copies on the training side.
    """
    fold = np.empty(len(y_index), dtype=np.int64)
    for k in range(n_classes):
        members = np.flatnonzero(y_index == k)
        fold[members] = np.arange(members.size) * folds // max(members.size, 1)
    return fold


class ShrinkageCache:
    """Results of :func:`select_shrinkage` by a digest of its inputs, for densities fitted on the same features.

    ``DetectorBundle.fit`` passes one to every density of a bundle (``fit(X, y, shrinkage_cache=...)``), so Sep and
    GMM on one layer cross-validate once (101 classes x 128 dims: GMM fit 13 s -> 2.3 s). It holds a float and a
    short score array per distinct input, never the inputs.
    """

    def __init__(self) -> None:
        self._results: dict[tuple, tuple[float, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._results)

    def get(self, key: tuple) -> tuple[float, np.ndarray] | None:
        return self._results.get(key)

    def put(self, key: tuple, best: float, scores: np.ndarray) -> None:
        self._results[key] = (best, scores.copy())


def select_shrinkage(
    X: np.ndarray, y_index: np.ndarray, n_classes: int, *, folds: int = 5, grid=SHRINKAGE_GRID,
    cache: ShrinkageCache | None = None,
) -> tuple[float, np.ndarray]:
    """Cross-validated intensity ``a`` of the per-class covariances ``(1 - a) S_k + a S_pooled``.

    Returns ``(best a, mean held-out log-likelihood per grid value)``, or ``(0.0, [])`` for a single class. Held-out
    samples are scored under their own class's Gaussian fitted on the other folds (:func:`class_folds`), with a
    rank-deficient class shrunk at least as :func:`regularised_cholesky` would; a grid value whose covariance is
    singular scores ``-inf``, and when none is finite the choice is 0 (the default regularisation path then
    applies). Per-class covariances fitted on a few hundred clips in a hundred or more PCA dimensions are badly
    overfitted without it: a held-out clip scores orders of magnitude below a training one. A ``cache`` that saw
    the same inputs answers without cross-validating again.
    """
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise DensityError(f"cross-validation needs at least 2 folds, got {folds!r}")
    X = np.asarray(X, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    if n_classes < 2:
        return 0.0, np.zeros(0)
    key = _selection_key(X, y_index, n_classes, folds, grid) if cache is not None else None
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return cached[0], cached[1].copy()
    best, scores = _cross_validate(X, y_index, n_classes, folds, grid)
    if cache is not None:
        cache.put(key, best, scores)
    return best, scores

def _selection_key(X: np.ndarray, y_index: np.ndarray, n_classes: int, folds: int, grid: np.ndarray) -> tuple:
    digest = hashlib.sha1(np.ascontiguousarray(X).view(np.uint8))
    digest.update(np.ascontiguousarray(y_index, dtype=np.int64).view(np.uint8))
    return X.shape, n_classes, folds, tuple(grid.tolist()), digest.hexdigest()


def _cross_validate(X: np.ndarray, y_index: np.ndarray, n_classes: int, folds: int,
                    grid: np.ndarray) -> tuple[float, np.ndarray]:
    d = X.shape[1]
    fold_of = class_folds(y_index, n_classes, folds)
    total, scored_samples = np.zeros(len(grid)), 0
    for fold in range(folds):
        train, held = fold_of != fold, fold_of == fold
        Xt, yt = X[train], y_index[train]
        counts = np.bincount(yt, minlength=n_classes)
        means = np.stack([Xt[yt == k].mean(axis=0) if counts[k] else np.zeros(d) for k in range(n_classes)])
        residuals = Xt - means[yt]
        pooled = residuals.T @ residuals / max(len(Xt), 1)
        for k in range(n_classes):
            scored = X[held & (y_index == k)]
            if not scored.size or counts[k] < 2:
                continue
            members = Xt[yt == k]
            own = empirical_covariance(members, means[k])
            floor = _ledoit_wolf_intensity(members) if counts[k] <= d else 0.0
            for i, a in enumerate(grid):
                a = max(a, floor)
                total[i] += _gaussian_log_likelihood(scored, means[k], (1.0 - a) * own + a * pooled).sum()
            scored_samples += scored.shape[0]
    mean = total / max(scored_samples, 1)
    if not np.isfinite(mean).any():
        return 0.0, mean
    return float(grid[int(np.argmax(mean))]), mean


def _gaussian_log_likelihood(X: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    try:
        chol = linalg.cholesky(cov, lower=True, check_finite=False)
    except linalg.LinAlgError:
        return np.full(X.shape[0], -np.inf)
    diag = np.diag(chol)
    if diag.min() <= 0 or (diag.max() / diag.min()) ** 2 > MAX_CONDITION:
        return np.full(X.shape[0], -np.inf)
    z = linalg.solve_triangular(chol, (X - mean).T, lower=True, check_finite=False)
    return -0.5 * np.einsum("dn,dn->n", z, z) - np.log(diag).sum() - 0.5 * X.shape[1] * np.log(2 * np.pi)


def covariance_from_precision_cholesky(precision_chol: np.ndarray) -> np.ndarray:
    """The covariance(s) whose precision factor is ``precision_chol`` (``(d, d)`` or ``(J, d, d)``): the inverse of
    :func:`precision_cholesky`, so that saved densities need not store both."""
    if precision_chol.ndim == 3:
        return np.stack([covariance_from_precision_cholesky(p) for p in precision_chol])
    d = precision_chol.shape[0]
    lower = linalg.solve_triangular(precision_chol.T, np.eye(d), lower=True, check_finite=False)
    return lower @ lower.T


def precision_cholesky(chol_lower: np.ndarray) -> np.ndarray:
    """Upper factor ``P`` with ``P P^T = inverse(covariance)``, from the covariance's lower Cholesky factor."""
    d = chol_lower.shape[0]
    return linalg.solve_triangular(chol_lower, np.eye(d), lower=True, check_finite=False).T
