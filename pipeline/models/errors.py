"""Errors raised by :mod:`pipeline.models`: all are ``ValueError`` subclasses with one-line messages."""

from __future__ import annotations

from pipeline.errors import ClipwatchError


class ModelError(ClipwatchError, ValueError):
    """Base class for model construction, tapping and weights errors."""


class UnknownModelError(ModelError):
    """An architecture name or option that the registry does not know."""


class InputShapeError(ModelError):
    """A clip batch whose shape the model cannot take."""


class UnknownLayerError(ModelError):
    """A feature-tap layer name that is not a submodule of the model."""


class WeightsError(ModelError):
    """A weights file or manifest that cannot be read or does not fit the model."""


class ModelNotFoundError(WeightsError, FileNotFoundError):
    """A model directory, manifest or shipped model that does not exist."""
