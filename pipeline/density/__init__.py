"""Probabilistic modelling of deep features: pooling + PCA reduction and class-conditional densities.

Densities follow scikit-learn's estimator contract: ``fit(X, y)`` returns ``self``; ``class_log_likelihood``,
``score_samples`` (higher = more in-distribution) and ``predict`` (the likelihood classifier) score new samples.
"""

from pipeline.density.base import ClassConditionalDensity
from pipeline.density.covariance import ShrinkageCache
from pipeline.density.errors import DensityError
from pipeline.density.gaussian import SeparateGaussian, TiedGaussian
from pipeline.density.gmm import ClassConditionalGMM
from pipeline.density.persistence import PersistenceError, load, save
from pipeline.density.pooling import pool_features
from pipeline.density.reduce import PCAReducer

DENSITY_TYPES = {"tied": TiedGaussian, "sep": SeparateGaussian, "gmm": ClassConditionalGMM}

__all__ = [
    "DENSITY_TYPES",
    "ClassConditionalDensity",
    "ClassConditionalGMM",
    "DensityError",
    "PCAReducer",
    "PersistenceError",
    "SeparateGaussian",
    "ShrinkageCache",
    "TiedGaussian",
    "load",
    "pool_features",
    "save",
]
