"""The class-conditional densities a bundle can fit, by the names bundles and ``clipwatch fit`` use."""

from pipeline.density.gaussian import SeparateGaussian, TiedGaussian
from pipeline.density.gmm import ClassConditionalGMM

DENSITY_TYPES = {"tied": TiedGaussian, "sep": SeparateGaussian, "gmm": ClassConditionalGMM}
