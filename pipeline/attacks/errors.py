"""Errors raised by :mod:`pipeline.attacks`: ``ValueError`` subclasses with one-line messages."""

from __future__ import annotations

from pipeline.errors import ClipwatchError


class AttackError(ClipwatchError, ValueError):
    """Bad input to an attack: clip shape or range, labels, frame geometry or hyper-parameters."""


class AttackFileError(AttackError):
    """An attacked-clips or adversarial-frame file that cannot be read or written; the message names the file."""
