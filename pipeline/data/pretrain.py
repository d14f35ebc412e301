"""The pretraining corpus: ``clipwatch synth --world pretrain OUT``, broad linear motion for a backbone to learn.

Each class is one combination of three motions of one actor, so a network must tell all three apart at once:

- translation: still, or one of 8 directions (0°, 45°, ... counter-clockwise from screen right), at any speed;
- rotation: none, clockwise or counter-clockwise;
- scale: none, growing or shrinking;

81 classes named like ``T045RcwSgrow`` (``Tstill``, ``Rnone``, ``Snone`` for no motion). The default world's
renderer draws them (its digits, ellipses and textured actors, now from 8 % of the frame height up, on its photo and
video backgrounds, with its nuisances). What the corpus leaves out, on purpose: the default world's novel classes
(Orbit, ZigZag, Blink: circling, sawtooth paths, flicker) and every motion family of the yard world
(`pipeline.data.yard`: hops, swings, spirals, stop-and-go, sine paths, trembling), so those stay fair tests of a
backbone trained here. The default world's ten classes are points of this space (MoveLeft is ``T180RnoneSnone``).

`PRETRAIN_SYMMETRIES` are the corpus's label maps under time reversal and mirroring (see
`pipeline.training.symmetry`), which the ``pretrain`` training preset uses to make motion the only cue, and
`PRETRAIN_FACTORS` each class's three motions, which it learns one by one as well (``pipeline.training.factors``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .motions import VideoSpec, _sample_appearance
from .render import SourceImagery, render_video
from .synth import SynthReport, write_world
from .ucf101 import DatasetError

MANIFEST = "pretrain.json"

DIRECTIONS = (None, 0, 45, 90, 135, 180, 225, 270, 315)
ROTATIONS = ("none", "cw", "ccw")
SCALES = ("none", "grow", "shrink")


def class_name(direction: int | None, rotation: str, scale: str) -> str:
    """``T<degrees>R<rotation>S<scale>``, e.g. ``T045RcwSgrow``; ``Tstill`` when the actor stays in place."""
    where = "still" if direction is None else f"{direction:03d}"
    return f"T{where}R{rotation}S{scale}"


PRETRAIN_CLASSES = tuple(class_name(d, r, s) for d in DIRECTIONS for r in ROTATIONS for s in SCALES)


def _mapped(direction: int | None, turn, rotation: str, scale: str, swap_rotation: bool,
            swap_scale: bool) -> str:
    flipped_rotation = {"cw": "ccw", "ccw": "cw", "none": "none"}[rotation] if swap_rotation else rotation
    flipped_scale = {"grow": "shrink", "shrink": "grow", "none": "none"}[scale] if swap_scale else scale
    return class_name(None if direction is None else turn(direction) % 360, flipped_rotation, flipped_scale)


def _table(turn, swap_scale: bool) -> dict[str, str]:
    return {class_name(d, r, s): _mapped(d, turn, r, s, True, swap_scale)
            for d in DIRECTIONS for r in ROTATIONS for s in SCALES}


PRETRAIN_SYMMETRIES: dict[str, dict[str, str]] = {
    "reverse_time": _table(lambda d: d + 180, swap_scale=True),
    "flip_horizontal": _table(lambda d: 180 - d, swap_scale=False),
    "flip_vertical": _table(lambda d: -d, swap_scale=False),
}
"""Time reversal turns every motion around; a mirror flips the direction across its axis and the rotation sense."""

PRETRAIN_FACTORS: dict[str, dict[str, str]] = {
    "translation": {name: name[1:].split("R")[0] for name in PRETRAIN_CLASSES},
    "rotation": {name: name.split("R")[1].split("S")[0] for name in PRETRAIN_CLASSES},
    "scale": {name: name.split("S")[-1] for name in PRETRAIN_CLASSES},
}
"""Each class's three motions, for the factor losses of the ``pretrain`` preset (``pipeline.training.factors``)."""


def sample_pretrain_spec(name: str, rng: np.random.Generator, width: int, height: int,
                         num_frames: int, actor_scale: float = 1.0) -> VideoSpec:
    """A random video of corpus class `name` (see the module docstring), appearance drawn as the default world's;
    ``actor_scale`` scales the actor's drawn size (every random draw stays the same)."""
    where, rest = name[1:].split("R")
    rotation, scale = rest.split("S")
    w, h, last = float(width), float(height), max(num_frames - 1, 1)
    growth = 0.0 if scale == "none" else rng.uniform(0.008, 0.025) * (1 if scale == "grow" else -1)
    start_size = actor_scale * math.exp(rng.uniform(math.log(0.08 * h), math.log(0.4 * h)))
    end_size = start_size * math.exp(growth * last)
    biggest = max(start_size, end_size)
    if biggest > 0.6 * min(w, h):  # keep a growing actor inside the frame
        start_size *= 0.6 * min(w, h) / biggest
        biggest = 0.6 * min(w, h)
    margin = 0.72 * biggest
    vx = vy = 0.0
    if where != "still":
        theta = math.radians(int(where))
        speed = rng.uniform(0.005, 0.02) * min(w, h)
        room_x, room_y = max(w - 2 * margin, 0.0), max(h - 2 * margin, 0.0)
        limit = min(room_x / (abs(math.cos(theta)) * last + 1e-9), room_y / (abs(math.sin(theta)) * last + 1e-9))
        speed = min(speed, limit)
        vx, vy = speed * math.cos(theta), -speed * math.sin(theta)  # screen y points down
    x0 = _start(rng, margin, w - margin, vx * last)
    y0 = _start(rng, margin, h - margin, vy * last)
    spin = 0.0 if rotation == "none" else rng.uniform(2.0, 8.0) * (-1.0 if rotation == "cw" else 1.0)
    return VideoSpec(class_name=name, width=width, height=height, num_frames=num_frames, x0=x0, y0=y0, vx=vx,
                     vy=vy, angle0=rng.uniform(0.0, 360.0), spin=spin, size0=start_size, growth=growth,
                     **_sample_appearance(rng))


def _start(rng: np.random.Generator, low: float, high: float, travel: float) -> float:
    """A start coordinate from which moving `travel` pixels stays within [low, high]."""
    lowest, highest = low - min(travel, 0.0), high - max(travel, 0.0)
    return float(rng.uniform(lowest, highest)) if highest > lowest else float((lowest + highest) / 2)


def synthesize_pretrain(out: str | Path, *, videos_per_class: int = 25, seed: int = 0, width: int = 128,
                        height: int = 96, fps: float = 25.0, num_frames: int = 40, actor_scale: float = 1.0,
                        overwrite: bool = False, progress: bool = True) -> SynthReport:
    """Write the corpus in the UCF101 layout with ``pretrain.json`` (every video's `VideoSpec`); ``actor_scale``
    < 1 makes every actor smaller (the same videos otherwise)."""
    if not 0 < actor_scale <= 1:
        raise DatasetError(f"actor scale must be in (0, 1] (larger actors would leave the frame), got {actor_scale}")
    imagery = SourceImagery(height)

    def make_video(name: str, group: int, clip: int) -> tuple[np.ndarray, int, dict]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2000 + PRETRAIN_CLASSES.index(name), group, clip]))
        spec = sample_pretrain_spec(name, rng, width, height, num_frames, actor_scale)
        return render_video(spec, imagery)[0], spec.quality, {"spec": spec.to_json()}

    manifest = {"file": MANIFEST, "generator": "clipwatch.pretrain", "seed": seed, "width": width, "height": height,
                "num_frames": num_frames, "actor_scale": actor_scale}
    return write_world(out, PRETRAIN_CLASSES, videos_per_class, make_video, fps=fps, manifest=manifest,
                       overwrite=overwrite, progress=progress, desc="pretraining videos")
