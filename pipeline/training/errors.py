"""The error type of :mod:`pipeline.training`: a ``ValueError`` whose message is one line naming what and why."""

from __future__ import annotations


class TrainingError(ValueError):
    """A training run that cannot start or go on: bad settings, output folder, checkpoint or diverging loss."""
