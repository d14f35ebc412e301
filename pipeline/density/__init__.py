"""Probabilistic modelling of deep features: pooling + PCA reduction and class-conditional densities.

Densities follow scikit-learn's estimator contract: ``fit(X, y)`` returns ``self``; ``class_log_likelihood``,
``score_samples`` (higher = more in-distribution) and ``predict`` (the likelihood classifier) score new samples.
"""

from pipeline.density.base import ClassConditionalDensity, check_features
from pipeline.density.covariance import CovarianceFit, ShrinkageCache, regularised_cholesky
from pipeline.density.gaussian import SeparateGaussian, TiedGaussian
from pipeline.density.gmm import ClassConditionalGMM
from pipeline.density.persistence import PersistenceError, load, read_manifest, save
from pipeline.density.pooling import pool_features
from pipeline.density.reduce import PCAReducer

DENSITY_TYPES = {"tied": TiedGaussian, "sep": SeparateGaussian, "gmm": ClassConditionalGMM}

__all__ = [
    "DENSITY_TYPES",
    "ClassConditionalDensity",
    "ClassConditionalGMM",
    "CovarianceFit",
    "PCAReducer",
    "PersistenceError",
    "SeparateGaussian",
    "ShrinkageCache",
    "TiedGaussian",
    "check_features",
    "load",
    "pool_features",
    "read_manifest",
    "regularised_cholesky",
    "save",
]
