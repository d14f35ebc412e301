"""The work of each stage as plain callables, usable and tested without a bus.

- `decode`: sources → clip messages (stream planning, file reading, clip geometry, sequence numbering);
- `classify`: clip messages → embedding messages (one tapped forward pass per batch);
- `score`: embedding messages → verdict messages (the bundle's densities and calibration);
- `record`: verdicts → alert rules, alert log, webhooks, verdict log; health events → health log.

A step answers `Rejected(reason)` for an input it cannot use; the worker dead-letters that input. The modules are
imported on their own (``from pipeline.stream.steps.classify import ClassifierStep``), so a sink never loads torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

__all__ = ["Rejected", "screen"]


@dataclass(frozen=True)
class Rejected:
    """A step's answer for an input it cannot use, with the one-line reason."""

    reason: str


def screen(items: Sequence[T], problem: Callable[[T], str | None]) -> tuple[list, list[int]]:
    """Per-input results with a `Rejected` where `problem(item)` names one (None elsewhere), and the usable indices."""
    results: list = [None] * len(items)
    usable: list[int] = []
    for index, item in enumerate(items):
        reason = problem(item)
        if reason is None:
            usable.append(index)
        else:
            results[index] = Rejected(reason)
    return results, usable
