"""The error type of :mod:`pipeline.training`: a ``ValueError`` whose message is one line naming what and why."""

from __future__ import annotations

from pipeline.errors import ClipwatchError


class TrainingError(ClipwatchError, ValueError):
    """A training run that cannot start or go on: bad settings, output folder, checkpoint or diverging loss."""
