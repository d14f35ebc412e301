"""Covariance estimation and its regularisation path, in float64.

Every covariance a density uses goes through :func:`regularised_cholesky`, which applies, in order:

1. **Shrinkage** when the estimate is rank-deficient by construction (``n_samples <= n_features``):
   ``S <- (1 - a) S + a T`` with the Ledoit-Wolf intensity ``a`` (``a = 1`` for a single sample) and a
   target ``T``: the pooled covariance of all classes when given (regularised discriminant analysis),
   else ``mean(diag S) * I``.
2. **A jitter ladder** when the matrix is still not positive definite or is ill-conditioned
   (condition number above ``max_condition``): ``S + eps * scale * I`` for ``eps = 1e-10, 1e-9, ...``
   until the Cholesky factorisation succeeds and the condition number is acceptable.

The factorisation is computed once and returned with a :class:`CovarianceFit` record, which the
densities collect in their ``fit_report_`` so users can see which classes needed help.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import linalg
from sklearn.covariance import ledoit_wolf_shrinkage

MAX_CONDITION = 1e10
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
    max_condition: float = MAX_CONDITION,
) -> tuple[np.ndarray, np.ndarray, CovarianceFit]:
    """Return ``(covariance, lower Cholesky factor, record)`` after the documented regularisation path.

    ``samples`` (centred or not) lets the Ledoit-Wolf intensity be estimated when shrinkage is needed;
    ``target`` is the matrix to shrink toward (default: scaled identity).
    """
    cov = np.array(cov, dtype=np.float64)
    d = cov.shape[0]
    record = CovarianceFit(label=label, n_samples=int(n_samples), n_features=d)
    if n_samples <= d:
        cov = _shrink(cov, samples, target, record)
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
    raise ValueError(f"covariance of {label} could not be regularised (non-finite or degenerate features)")


def _shrink(cov: np.ndarray, samples: np.ndarray | None, target: np.ndarray | None, record: CovarianceFit) -> np.ndarray:
    d = cov.shape[0]
    if samples is not None and samples.shape[0] >= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            intensity = float(ledoit_wolf_shrinkage(np.asarray(samples, dtype=np.float64), assume_centered=False))
    else:
        intensity = 1.0
    intensity = min(max(intensity, 1e-3), 1.0) if np.isfinite(intensity) else 1.0
    if target is None:
        mu = float(np.trace(cov)) / d
        target = mu * np.eye(d)
        record.shrinkage_target = "scaled_identity"
    else:
        record.shrinkage_target = "pooled_covariance"
    record.shrinkage = intensity
    return (1.0 - intensity) * cov + intensity * target


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
