"""Activity classes of the synthetic dataset, defined by motion alone, and the per-video parameters (`VideoSpec`).

Each class is a motion pattern of one actor; where the actor is, how it is turned and how big it is at any single
frame is drawn from overlapping ranges for every class, so only the change over time tells the classes apart. Pairs such
as MoveLeft/MoveRight are exact time reversals of each other, which makes their single-frame statistics identical.
Angles follow OpenCV: positive degrees turn counter-clockwise on screen (y points down).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from pipeline.errors import ClipwatchError

SYNTH_CLASSES = (
    "MoveLeft", "MoveRight", "MoveUp", "MoveDown", "RotateClockwise", "RotateCounterClockwise",
    "Grow", "Shrink", "ApproachAndRetreat", "StandStill",
)
"""In-distribution classes, in classInd order."""

SYNTH_NOVEL_CLASSES = ("Orbit", "ZigZag", "Blink")
"""Held-out classes whose motion none of SYNTH_CLASSES shows: circling, sawtooth path, flickering in and out."""

ALL_CLASSES = SYNTH_CLASSES + SYNTH_NOVEL_CLASSES

ACTORS = ("digit", "ellipse")
TEXTURES = ("china", "flower", "carphone")
BACKGROUNDS = ("china", "flower", "bikes", "carphone", "bigbuckbunny")

_PATTERN = {
    "ApproachAndRetreat": "peak", "Orbit": "orbit", "ZigZag": "zigzag", "Blink": "blink",
}  # every other class moves linearly in position, angle and log-size
_MARGIN = 0.72  # half-diagonal of a square sprite over its side: keeps any rotation inside the frame
_SPEED = (0.008, 0.016)  # translation, fraction of the frame side per frame
_SPIN = (3.0, 7.0)  # rotation, degrees per frame
_GROWTH = (0.012, 0.025)  # change of log-size per frame
_SIZE = (0.22, 0.42)  # actor side, fraction of the frame height


@dataclass(frozen=True)
class VideoSpec:
    """Everything that decides one synthetic video; `render_video(spec)` turns it into frames, deterministically.

    Sizes and positions are in pixels of the output frame. A box ``(fx, fy, scale)`` is a crop of its source with the
    output's aspect ratio, ``scale`` times the largest such crop, placed at fractions ``fx, fy`` of the room left
    around it; times are fractions of the source clip's length.
    """

    class_name: str
    width: int
    height: int
    num_frames: int
    # motion: centre, velocity (px/frame), angle (deg) and spin (deg/frame), size (px) and log-size growth per frame
    x0: float
    y0: float
    vx: float = 0.0
    vy: float = 0.0
    angle0: float = 0.0
    spin: float = 0.0
    size0: float = 32.0
    growth: float = 0.0
    peak: float = 0.0
    radius: float = 0.0
    period: float = 1.0
    phase: float = 0.0
    duty: float = 1.0
    direction: float = 1.0
    # actor appearance
    actor: str = "digit"
    digit: int = 0
    aspect: float = 1.0
    texture: str = "china"
    texture_box: tuple[float, float, float] = (0.5, 0.5, 1.0)
    texture_time: float = 0.0
    outline: float = 0.0
    # background
    background: str = "china"
    background_box: tuple[float, float, float] = (0.5, 0.5, 1.0)
    background_time: float = 0.0
    background_flip: bool = False
    # nuisances: camera shake (fraction of the width), brightness offset and drift, contrast, sensor noise
    # (std in grey levels), MPEG-4 quantiser (2 = best)
    jitter: float = 0.0
    brightness: float = 0.0
    brightness_drift: float = 0.0
    contrast: float = 1.0
    noise_sigma: float = 0.0
    noise_seed: int = 0
    quality: int = 4

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VideoSpec:
        known = {f.name for f in fields(cls)}
        values = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in data.items() if key in known}
        return cls(**values)


@dataclass(frozen=True)
class Trajectory:
    """Per-frame actor pose: centre (px), angle (deg, counter-clockwise), size (px) and visibility (0 or 1)."""

    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    size: np.ndarray
    visible: np.ndarray


def trajectory(spec: VideoSpec) -> Trajectory:
    """The actor's pose in every frame of ``spec``; a pure function of the spec."""
    t = np.arange(spec.num_frames, dtype=np.float64)
    pattern = _PATTERN.get(spec.class_name, "linear")
    cx, cy = spec.x0 + spec.vx * t, spec.y0 + spec.vy * t
    angle = spec.angle0 + spec.spin * t
    size = spec.size0 * np.exp(spec.growth * t)
    visible = np.ones_like(t)
    if pattern == "peak":
        size = spec.size0 * np.exp(-spec.growth * np.abs(t - spec.peak))
    elif pattern == "orbit":
        theta = 2 * np.pi * (spec.phase + spec.direction * t / spec.period)
        cx, cy = spec.x0 + spec.radius * np.cos(theta), spec.y0 + spec.radius * np.sin(theta)
    elif pattern == "zigzag":
        cycle = (t / spec.period + spec.phase) % 1.0
        cy = spec.y0 + spec.radius * (4 * np.abs(cycle - 0.5) - 1)
    elif pattern == "blink":
        visible = (((t / spec.period + spec.phase) % 1.0) < spec.duty).astype(np.float64)
    return Trajectory(cx, cy, angle, size, visible)


def sample_spec(class_name: str, rng: np.random.Generator, width: int, height: int, num_frames: int, *,
                actor_scale: float = 1.0) -> VideoSpec:
    """Draw a random video of ``class_name``: its motion from the class, everything else independently of it.
    ``actor_scale`` scales the actor's size after the draw (the path and every other draw stay the same)."""
    if class_name not in ALL_CLASSES:
        raise ClipwatchError(f"unknown synthetic class {class_name!r}; known: {', '.join(ALL_CLASSES)}")
    motion = _sample_motion(class_name, rng, float(width), float(height), num_frames)
    motion["size0"] *= actor_scale
    return VideoSpec(class_name=class_name, width=width, height=height, num_frames=num_frames,
                     **motion, **_sample_appearance(rng))


def _sample_motion(name: str, rng: np.random.Generator, w: float, h: float, frames: int) -> dict[str, float]:
    last = max(frames - 1, 1)
    angle0 = rng.uniform(0.0, 360.0)
    if name in ("MoveLeft", "MoveRight", "MoveUp", "MoveDown", "ZigZag"):
        horizontal = name in ("MoveLeft", "MoveRight", "ZigZag")
        along, across = (w, h) if horizontal else (h, w)
        size = _log_uniform(rng, _SIZE[0] * h, 0.32 * h if name == "ZigZag" else _SIZE[1] * h)
        margin = _MARGIN * size
        amplitude = rng.uniform(0.08, 0.14) * h if name == "ZigZag" else 0.0
        speed = min(rng.uniform(*_SPEED) * along, max(along - 2 * margin, 0.0) / last)
        travel = speed * last
        start = _uniform(rng, margin, along - margin - travel)
        side = _uniform(rng, margin + amplitude, across - margin - amplitude)
        if name in ("MoveLeft", "MoveUp") or (name == "ZigZag" and rng.random() < 0.5):
            start, speed = start + travel, -speed  # the time reversal of MoveRight / MoveDown
        x0, y0, vx, vy = (start, side, speed, 0.0) if horizontal else (side, start, 0.0, speed)
        motion = dict(x0=x0, y0=y0, vx=vx, vy=vy, angle0=angle0, size0=size)
        if name == "ZigZag":
            motion.update(radius=amplitude, period=rng.uniform(8.0, 14.0), phase=rng.uniform())
        return motion
    if name in ("Grow", "Shrink", "ApproachAndRetreat"):
        smallest, largest = 0.15 * h, 0.65 * min(h, w)
        peak = rng.uniform(0.35, 0.65) * last if name == "ApproachAndRetreat" else float(last)
        span = max(peak, last - peak)
        growth = min(rng.uniform(*_GROWTH), math.log(largest / smallest) / span)
        biggest = _log_uniform(rng, smallest * math.exp(growth * span), largest)
        x0, y0 = _position(rng, w, h, biggest)
        if name == "ApproachAndRetreat":
            return dict(x0=x0, y0=y0, angle0=angle0, size0=biggest, growth=growth, peak=peak)
        smallest_now = biggest * math.exp(-growth * last)
        if name == "Grow":
            return dict(x0=x0, y0=y0, angle0=angle0, size0=smallest_now, growth=growth)
        return dict(x0=x0, y0=y0, angle0=angle0, size0=biggest, growth=-growth)
    if name in ("RotateClockwise", "RotateCounterClockwise"):
        size = _log_uniform(rng, 0.3 * h, 0.5 * h)
        x0, y0 = _position(rng, w, h, size)
        spin = rng.uniform(*_SPIN) * (-1.0 if name == "RotateClockwise" else 1.0)
        return dict(x0=x0, y0=y0, angle0=angle0, spin=spin, size0=size)
    if name == "Orbit":
        size = _log_uniform(rng, 0.18 * h, 0.3 * h)
        radius = rng.uniform(0.15, 0.28) * h
        x0, y0 = _position(rng, w, h, size, extra=radius)
        return dict(x0=x0, y0=y0, angle0=angle0, size0=size, radius=radius, period=rng.uniform(18.0, 36.0),
                    phase=rng.uniform(), direction=float(rng.choice([-1.0, 1.0])))
    size = _log_uniform(rng, _SIZE[0] * h, _SIZE[1] * h)
    x0, y0 = _position(rng, w, h, size)
    if name == "Blink":
        period = rng.uniform(6.0, 12.0)
        return dict(x0=x0, y0=y0, angle0=angle0, size0=size, period=period, duty=rng.uniform(0.4, 0.6),
                    phase=rng.uniform())
    return dict(x0=x0, y0=y0, angle0=angle0, size0=size)  # StandStill


def _sample_appearance(rng: np.random.Generator) -> dict[str, Any]:
    """Actor look, background and nuisances: drawn the same way for every class, so they carry no label."""
    return dict(
        actor=str(rng.choice(ACTORS)), digit=int(rng.integers(0, 1797)), aspect=rng.uniform(0.45, 0.8),
        texture=str(rng.choice(TEXTURES)), texture_box=_box(rng, 0.15, 0.4), texture_time=rng.uniform(),
        outline=float(rng.choice([0.0, 255.0])),
        background=str(rng.choice(BACKGROUNDS)), background_box=_box(rng, 0.5, 1.0),
        background_time=rng.uniform(), background_flip=bool(rng.random() < 0.5),
        jitter=rng.uniform(0.0, 0.01), brightness=rng.uniform(-25.0, 25.0),
        brightness_drift=rng.uniform(-15.0, 15.0), contrast=rng.uniform(0.75, 1.25),
        noise_sigma=rng.uniform(0.0, 6.0), noise_seed=int(rng.integers(0, 2**31)), quality=int(rng.integers(2, 9)),
    )


def _box(rng: np.random.Generator, low: float, high: float) -> tuple[float, float, float]:
    """A random crop ``(fx, fy, scale)`` (see `VideoSpec`) of ``low``..``high`` times the largest one."""
    return (rng.uniform(), rng.uniform(), rng.uniform(low, high))


def _position(rng: np.random.Generator, w: float, h: float, size: float, extra: float = 0.0) -> tuple[float, float]:
    margin = _MARGIN * size + extra
    return _uniform(rng, margin, w - margin), _uniform(rng, margin, h - margin)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Uniform in [low, high], or the midpoint when the range is empty (frames too small for the motion)."""
    return float(rng.uniform(low, high)) if high > low else float((low + high) / 2)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(_uniform(rng, math.log(low), math.log(max(high, low)))))
