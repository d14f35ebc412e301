"""Label-mapping symmetries: transforms of a clip that turn one motion class into another, known class by class.

Reversing time turns MoveLeft into MoveRight, Grow into Shrink, RotateClockwise into RotateCounterClockwise;
mirroring left-right or up-down swaps the horizontal or vertical moves and the two rotations (see
``pipeline.data.motions``: every synthetic pair is an exact reversal or mirror image of the other). Applied with
the label changed accordingly, these transforms show each video's appearance under several labels, which takes
away the shortcut a small network otherwise finds on a few hundred videos (recognising the video, not its
motion), and leaves the motion as the only cue. A class missing from a table is never transformed by it, so
the tables are harmless on datasets (such as UCF101) whose classes they do not name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

TRANSFORMS = ("reverse_time", "flip_horizontal", "flip_vertical")
"""Known transforms; each acts on (T, H, W, 3) clips."""

_STILL = ("StandStill",)
SYNTH_SYMMETRIES: dict[str, dict[str, str]] = {
    "reverse_time": {
        "MoveLeft": "MoveRight", "MoveRight": "MoveLeft", "MoveUp": "MoveDown", "MoveDown": "MoveUp",
        "RotateClockwise": "RotateCounterClockwise", "RotateCounterClockwise": "RotateClockwise",
        "Grow": "Shrink", "Shrink": "Grow", "ApproachAndRetreat": "ApproachAndRetreat", **{c: c for c in _STILL},
    },
    "flip_horizontal": {
        "MoveLeft": "MoveRight", "MoveRight": "MoveLeft", "MoveUp": "MoveUp", "MoveDown": "MoveDown",
        "RotateClockwise": "RotateCounterClockwise", "RotateCounterClockwise": "RotateClockwise",
        "Grow": "Grow", "Shrink": "Shrink", "ApproachAndRetreat": "ApproachAndRetreat", **{c: c for c in _STILL},
    },
    "flip_vertical": {
        "MoveLeft": "MoveLeft", "MoveRight": "MoveRight", "MoveUp": "MoveDown", "MoveDown": "MoveUp",
        "RotateClockwise": "RotateCounterClockwise", "RotateCounterClockwise": "RotateClockwise",
        "Grow": "Grow", "Shrink": "Shrink", "ApproachAndRetreat": "ApproachAndRetreat", **{c: c for c in _STILL},
    },
}
"""Class tables of the synthetic dataset's in-distribution classes (``pipeline.data.SYNTH_CLASSES``)."""


def check_symmetries(symmetries: Mapping[str, Mapping[str, str]]) -> None:
    """Raise ValueError unless every transform is known and its table is a bijection of its classes onto themselves."""
    for name, table in symmetries.items():
        if name not in TRANSFORMS:
            raise ValueError(f"unknown symmetry {name!r}; known: {', '.join(TRANSFORMS)}")
        if any(table.get(target) != source for source, target in table.items()):
            raise ValueError(f"symmetry {name!r} must map its classes onto themselves in pairs (an involution)")


def label_tables(symmetries: Mapping[str, Mapping[str, str]], classes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per transform, the label each label becomes (-1: this class is left untransformed)."""
    index = {name: label for label, name in enumerate(classes)}
    tables = {}
    for name, table in symmetries.items():
        mapped = [index.get(table[c], -1) if c in table else -1 for c in classes]
        tables[name] = torch.tensor(mapped, dtype=torch.int64)
    return tables


def apply_transform(name: str, clip: torch.Tensor) -> torch.Tensor:
    """Apply transform ``name`` to a (T, H, W, C) clip."""
    axis = {"reverse_time": 0, "flip_vertical": 1, "flip_horizontal": 2}[name]
    return clip.flip(axis)
