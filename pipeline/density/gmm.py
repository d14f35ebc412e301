"""Class-conditional Gaussian mixtures fitted by EM, with the number of components chosen by BIC."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp
from sklearn.cluster import KMeans

from pipeline.density.base import ClassConditionalDensity
from pipeline.density.covariance import (
    CovarianceFit,
    empirical_covariance,
    precision_cholesky,
    regularised_cholesky,
)
from pipeline.density.errors import DensityError
from pipeline.density.gaussian import class_means, pooled_covariance
from pipeline.density.scoring import LOG_2PI


@dataclass
class MixtureFit:
    """One class's mixture after EM."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    mean_log_likelihood: float
    n_iter: int
    converged: bool
    records: list[CovarianceFit] = field(default_factory=list)

    def bic(self, n_samples: int) -> float:
        k, d = self.means.shape
        n_params = k * d * (d + 1) / 2 + k * d + k - 1
        return -2.0 * n_samples * self.mean_log_likelihood + n_params * np.log(n_samples)


def _component_log_prob(X, weights, means, prec_chols) -> np.ndarray:
    d = X.shape[1]
    out = np.empty((X.shape[0], means.shape[0]))
    for j in range(means.shape[0]):
        y = (X - means[j]) @ prec_chols[j]
        log_det = np.sum(np.log(np.diag(prec_chols[j])))
        out[:, j] = np.log(weights[j]) + log_det - 0.5 * (d * LOG_2PI + np.einsum("nd,nd->n", y, y))
    return out


def fit_mixture(
    X: np.ndarray,
    n_components: int,
    *,
    seed: int,
    label: str,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    target: np.ndarray | None = None,
    shrinkage: float = 0.0,
) -> MixtureFit:
    """EM for a full-covariance mixture in float64, initialised by k-means (as scikit-learn does).

    ``reg_covar`` is added to every component's diagonal, relative to the mean feature variance; with
    ``shrinkage`` > 0 every component covariance is shrunk that much toward ``target`` in each M-step; any
    covariance still ill-conditioned goes through the jitter ladder (recorded).
    """
    n, d = X.shape
    reg = reg_covar * float(np.mean(np.var(X, axis=0))) or reg_covar
    if n_components == 1:
        resp = np.ones((n, 1))
    else:
        labels = KMeans(n_clusters=n_components, n_init=1, random_state=seed).fit(X).labels_
        resp = np.zeros((n, n_components))
        resp[np.arange(n), labels] = 1.0
    previous, converged, n_iter = -np.inf, False, 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (read after the loop)
        params = _m_step(X, resp, reg, label, target, shrinkage)
        log_prob = _component_log_prob(X, *params[:2], params[3])
        norm = logsumexp(log_prob, axis=1)
        mean_ll = float(norm.mean())
        resp = np.exp(log_prob - norm[:, None])
        if n_components == 1 or abs(mean_ll - previous) < tol:
            converged = True
            break
        previous = mean_ll
    weights, means, covs, prec_chols, records = params
    return MixtureFit(weights, means, covs, prec_chols, mean_ll, n_iter, converged, records)


def _m_step(X, resp, reg, label, target, shrinkage):
    n, d = X.shape
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
    means = resp.T @ X / nk[:, None]
    k = resp.shape[1]
    covs, prec_chols, records = np.empty((k, d, d)), np.empty((k, d, d)), []
    for j in range(k):
        cov = empirical_covariance(X, means[j], resp[:, j])
        cov.flat[:: d + 1] += reg
        covs[j], chol, record = regularised_cholesky(cov, n_samples=n, label=f"{label} component {j}",
                                                     target=target, intensity=shrinkage)
        prec_chols[j] = precision_cholesky(chol)
        records.append(record)
    return nk / n, means, covs, prec_chols, records


class ClassConditionalGMM(ClassConditionalDensity):
    """A full-covariance Gaussian mixture per class; components chosen per class by BIC or fixed.

    With ``n_components="bic"`` every count in ``1..max_components`` is fitted and the lowest BIC wins.
    A count ``K`` is only tried when the class has more than ``K * (d + 1)`` samples (enough for full-rank
    component covariances); a class with no more samples than dimensions gets one Gaussian shrunk toward
    the pooled covariance, exactly as :class:`SeparateGaussian` does, and the reduction is noted in
    ``fit_report_``. Component covariances are shrunk toward the pooled covariance by ``shrinkage_``, chosen
    as :class:`SeparateGaussian` chooses it (``shrinkage="cv"``: cross-validated for one Gaussian per class).
    Deterministic given ``random_state``.

    Fitted attributes: ``classes_``, ``n_components_ (C,)``, ``weights_ (J,)``, ``means_ (J, d)``,
    ``covariances_``, ``precisions_cholesky_ (J, d, d)``, ``component_class_ (J,)``, ``bic_ (C, max)``
    (``inf`` where not tried), ``converged_ (C,)``.
    """

    _array_attributes = (
        "center_",
        "n_components_",
        "weights_",
        "means_",
        "covariances_",
        "precisions_cholesky_",
        "component_class_",
        "bic_",
        "converged_",
    )
    _derived_attributes = {"covariances_": "precisions_cholesky_"}

    def __init__(
        self,
        n_components: int | str = "bic",
        max_components: int = 4,
        random_state: int = 0,
        max_iter: int = 100,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        shrinkage: float | str = "cv",
        cv_folds: int = 5,
        scoring_dtype: str = "float32",
    ):
        self.n_components = n_components
        self.max_components = max_components
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.shrinkage = shrinkage
        self.cv_folds = cv_folds
        self.scoring_dtype = scoring_dtype

    def _candidate_counts(self, n_samples: int, d: int) -> tuple[list[int], str]:
        if self.n_components == "bic":
            wanted = list(range(1, int(self.max_components) + 1))
        elif isinstance(self.n_components, (int, np.integer)) and self.n_components >= 1:
            wanted = [int(self.n_components)]
        else:
            raise DensityError(f"n_components must be 'bic' or a positive int, got {self.n_components!r}")
        feasible = [k for k in wanted if n_samples > k * (d + 1)]
        if len(feasible) == len(wanted):
            return feasible, ""
        if not feasible:
            return [], f"{n_samples} samples for {d} features: one shrunk Gaussian instead of {wanted}"
        return feasible, f"{n_samples} samples for {d} features: components limited to {feasible}"

    def _fit(self, X, y_index, n_classes, shrinkage_cache=None):
        if not isinstance(self.max_components, (int, np.integer)) or self.max_components < 1:
            raise DensityError(f"max_components must be a positive int, got {self.max_components!r}")
        self._candidate_counts(X.shape[0], X.shape[1])
        d = X.shape[1]
        means_c, counts = class_means(X, y_index, n_classes)
        intensity = self._fit_shrinkage(X, y_index, n_classes, shrinkage_cache)
        target = None
        if n_classes > 1 and (intensity > 0 or np.any(counts <= d)):
            target = pooled_covariance(X, y_index, means_c)[0]
        max_k = self.max_components if self.n_components == "bic" else int(self.n_components)
        self.bic_ = np.full((n_classes, max_k), np.inf)
        self.converged_ = np.ones(n_classes, dtype=bool)
        fits = []
        for k in range(n_classes):
            members = X[y_index == k]
            label = self._class_label(k)
            counts_to_try, note = self._candidate_counts(members.shape[0], d)
            if not counts_to_try:
                fits.append(self._shrunk_single(members, means_c[k], label, target, intensity, note))
                continue
            seed = int(np.random.default_rng([int(self.random_state), k]).integers(2**31 - 1))
            best = None
            for count in counts_to_try:
                fit = fit_mixture(
                    members, count, seed=seed, label=label,
                    max_iter=self.max_iter, tol=self.tol, reg_covar=self.reg_covar, target=target,
                    shrinkage=intensity,
                )
                self.bic_[k, count - 1] = fit.bic(members.shape[0])
                if best is None or self.bic_[k, count - 1] < self.bic_[k, best.means.shape[0] - 1]:
                    best = fit
            if note:
                best.records[0].note = note
            self.converged_[k] = best.converged
            fits.append(best)
        self.n_components_ = np.array([f.means.shape[0] for f in fits])
        self.weights_ = np.concatenate([f.weights for f in fits])
        self.means_ = np.concatenate([f.means for f in fits])
        self.covariances_ = np.concatenate([f.covariances for f in fits])
        self.precisions_cholesky_ = np.concatenate([f.precisions_cholesky for f in fits])
        self.component_class_ = np.repeat(np.arange(n_classes), self.n_components_)
        for f in fits:
            self.fit_report_.extend(f.records)

    @staticmethod
    def _shrunk_single(members, mean, label, target, intensity, note) -> MixtureFit:
        cov = empirical_covariance(members, mean)
        cov, chol, record = regularised_cholesky(
            cov, n_samples=members.shape[0], label=label, samples=members, target=target, intensity=intensity
        )
        record.note = note
        return MixtureFit(
            np.ones(1), mean[None], cov[None], precision_cholesky(chol)[None], float("nan"), 0, True, [record]
        )

    def _components(self):
        return self.means_, self.precisions_cholesky_, np.log(self.weights_), self.component_class_
