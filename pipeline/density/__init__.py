"""Probabilistic modelling of deep features: pooling + PCA reduction and class-conditional densities.

Densities follow scikit-learn's estimator contract: ``fit(X, y)`` returns ``self``; ``class_log_likelihood``,
``score_samples`` (higher = more in-distribution) and ``predict`` (the likelihood classifier) score new samples.
"""

from pipeline.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ClassConditionalDensity": "base",
    "ShrinkageCache": "covariance",
    "DensityError": "errors",
    "SeparateGaussian": "gaussian",
    "TiedGaussian": "gaussian",
    "ClassConditionalGMM": "gmm",
    "PersistenceError": "persistence",
    "load": "persistence",
    "save": "persistence",
    "pool_features": "pooling",
    "PCAReducer": "reduce",
    "DENSITY_TYPES": "registry",
})

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
