"""A second synthetic world, kept apart from the one clipwatch is tuned on: ``clipwatch synth --world yard OUT``.

Everything differs from the default world (`pipeline.data.motions`): the scenes are procedural static-camera yards
(sky gradient, ground texture, blocks of buildings and fences, sensor noise, lighting flicker) instead of photos and
real clips; the actors are small (10-22 % of the frame height) polygons, letters and noise-textured blobs instead of
digits and textured ellipses; and the six classes are motion families the default world has none of:

- Bounce: hops along the ground while drifting sideways;
- Pendulum: swings on an arc below a fixed pivot;
- Spiral: circles around a centre at a growing radius;
- StopAndGo: travels in one direction in bursts, standing still between them;
- Wave: travels sideways on a sine path;
- Shiver: stays in place, trembling fast.

The generator exists to measure learning on data nobody tuned on: do not adjust training settings to it.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import cv2
import numpy as np

from .synth import SynthReport, write_world
from .ucf101 import DatasetError

YARD_CLASSES = ("Bounce", "Pendulum", "Spiral", "StopAndGo", "Wave", "Shiver")
ACTOR_KINDS = ("polygon", "letter", "blob")
MANIFEST = "yard.json"


def synthesize_yard(out: str | Path, *, videos_per_class: int = 40, seed: int = 0, width: int = 160,
                    height: int = 120, fps: float = 25.0, num_frames: int = 64, overwrite: bool = False,
                    progress: bool = True) -> SynthReport:
    """Write the yard world in the UCF101 layout (three splits over 25 groups) with ``yard.json``."""
    if min(width, height) < 64 or num_frames < 16:
        raise DatasetError("yard: frames need at least 64 px and 16 frames")

    def make_video(name: str, group: int, clip: int) -> tuple[np.ndarray, int, dict]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1000 + YARD_CLASSES.index(name), group, clip]))
        return render_yard(name, rng, width, height, num_frames), 3, {}

    manifest = {"file": MANIFEST, "generator": "clipwatch.yard", "seed": seed, "width": width, "height": height,
                "num_frames": num_frames}
    return write_world(out, YARD_CLASSES, videos_per_class, make_video, fps=fps, manifest=manifest,
                       overwrite=overwrite, progress=progress, desc="yard videos")


def render_yard(name: str, rng: np.random.Generator, width: int, height: int, num_frames: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one video of class `name`."""
    scene = _scene(rng, width, height)
    sprite, mask = _actor(rng, height)
    side = sprite.shape[0]
    xs, ys = _path(name, rng, width, height, num_frames, side)
    noise = rng.uniform(2.0, 6.0)
    gain = 1.0 + rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * (np.arange(num_frames) / rng.uniform(20, 60))
                                                   + rng.uniform(0, 2 * np.pi))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = scene.copy()
        _paste(frame, sprite, mask, xs[t] - side / 2, ys[t] - side / 2)
        frame = frame * gain[t] + rng.normal(0.0, noise, frame.shape)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _path(name: str, rng: np.random.Generator, width: int, height: int, frames: int,
          side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre x, y (pixels) of the actor at every frame."""
    t = np.arange(frames, dtype=np.float64)
    low_x, high_x, low_y, high_y = side / 2 + 2, width - side / 2 - 2, side / 2 + 2, height - side / 2 - 2
    direction = rng.choice([-1.0, 1.0])
    if name == "Bounce":
        floor, hop = rng.uniform(0.7, 0.85) * height, rng.uniform(0.2, 0.35) * height
        period = rng.uniform(14, 24)
        x = rng.uniform(0.3, 0.7) * width + direction * rng.uniform(0.2, 0.6) * t
        y = floor - hop * np.abs(np.sin(np.pi * t / period + rng.uniform(0, np.pi)))
    elif name == "Pendulum":
        pivot_x, pivot_y = rng.uniform(0.35, 0.65) * width, rng.uniform(0.05, 0.2) * height
        length, swing = rng.uniform(0.45, 0.65) * height, math.radians(rng.uniform(30, 55))
        angle = swing * np.sin(2 * np.pi * t / rng.uniform(20, 34) + rng.uniform(0, 2 * np.pi))
        x, y = pivot_x + length * np.sin(angle), pivot_y + length * np.cos(angle)
    elif name == "Spiral":
        cx, cy = rng.uniform(0.4, 0.6) * width, rng.uniform(0.4, 0.6) * height
        radius = np.linspace(rng.uniform(0.03, 0.08), rng.uniform(0.3, 0.4), frames) * height
        if rng.random() < 0.5:
            radius = radius[::-1]
        angle = direction * 2 * np.pi * t / rng.uniform(16, 28) + rng.uniform(0, 2 * np.pi)
        x, y = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
    elif name == "StopAndGo":
        heading = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(1.5, 2.5)
        go, stop = rng.integers(5, 9), rng.integers(6, 10)
        moving = ((t + rng.integers(0, go + stop)) % (go + stop)) < go
        step = np.cumsum(moving * speed)
        x = width / 2 - np.cos(heading) * step[-1] / 2 + np.cos(heading) * step
        y = height / 2 - np.sin(heading) * step[-1] / 2 + np.sin(heading) * step
    elif name == "Wave":
        x = rng.uniform(0.35, 0.65) * width + direction * rng.uniform(0.6, 1.0) * (t - frames / 2)
        y = rng.uniform(0.35, 0.65) * height + rng.uniform(0.1, 0.18) * height * np.sin(
            2 * np.pi * t / rng.uniform(14, 22) + rng.uniform(0, 2 * np.pi))
    elif name == "Shiver":
        home = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
        offset, positions = np.zeros(2), []
        scale = rng.uniform(1.5, 3.0)
        for _ in range(frames):
            offset = 0.5 * offset + rng.normal(0.0, scale, 2)
            positions.append(home + offset)
        x, y = np.array(positions).T
    else:
        raise DatasetError(f"unknown yard class {name!r}; known: {', '.join(YARD_CLASSES)}")
    return np.clip(x, low_x, high_x), np.clip(y, low_y, high_y)


def _scene(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A static yard: sky gradient, textured ground, blocks of buildings and fences; float32 RGB."""
    horizon = int(rng.uniform(0.35, 0.6) * height)
    top, bottom = rng.uniform(90, 230, 3), rng.uniform(150, 250, 3)
    sky = np.linspace(0, 1, horizon)[:, None, None] * (bottom - top) + top
    scene = np.empty((height, width, 3), dtype=np.float32)
    scene[:horizon] = sky
    ground_colour = rng.uniform(40, 150, 3)
    grain = rng.normal(0, 1, ((height - horizon) // 4 + 1, width // 4 + 1, 1))
    grain = cv2.resize(grain.astype(np.float32), (width, height - horizon), interpolation=cv2.INTER_CUBIC)
    scene[horizon:] = ground_colour + 18 * grain[..., None]
    for _ in range(rng.integers(3, 9)):
        w, h = int(rng.uniform(0.08, 0.3) * width), int(rng.uniform(0.1, 0.4) * height)
        x0 = int(rng.uniform(0, width - w))
        colour = rng.uniform(30, 220, 3)
        cv2.rectangle(scene, (x0, horizon - h), (x0 + w, horizon), colour.tolist(), -1)
        if rng.random() < 0.5:  # windows or fence slats
            for xx in range(x0 + 3, x0 + w - 3, int(rng.integers(5, 10))):
                cv2.line(scene, (xx, horizon - h + 3), (xx, horizon - 2), (colour * 0.6).tolist(), 1)
    return cv2.GaussianBlur(scene, (3, 3), 0)


def _actor(rng: np.random.Generator, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A square sprite (RGB float32) and its alpha mask: a polygon, a letter or a noise-textured blob."""
    side = max(8, int(rng.uniform(0.10, 0.22) * height))
    mask = np.zeros((side, side), dtype=np.float32)
    kind = ACTOR_KINDS[rng.integers(len(ACTOR_KINDS))]
    centre = side / 2
    if kind == "polygon":
        corners = int(rng.integers(3, 8))
        star = rng.random() < 0.4
        points = []
        for k in range(corners * (2 if star else 1)):
            radius = (0.45 if not star or k % 2 == 0 else 0.2) * side
            angle = 2 * np.pi * k / (corners * (2 if star else 1)) + rng.uniform(0, 0.3)
            points.append((centre + radius * np.cos(angle), centre + radius * np.sin(angle)))
        cv2.fillPoly(mask, [np.round(np.array(points)).astype(np.int32)], 1.0)
    elif kind == "letter":
        letter = string.ascii_uppercase[rng.integers(26)]
        scale = side / 30
        (tw, th), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, side // 8))
        ink = np.zeros((side, side), dtype=np.uint8)
        cv2.putText(ink, letter, (int(centre - tw / 2), int(centre + th / 2)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    255, max(1, side // 8))
        mask = ink.astype(np.float32) / 255
    else:
        axes = (int(rng.uniform(0.3, 0.48) * side), int(rng.uniform(0.2, 0.48) * side))
        cv2.ellipse(mask, (side // 2, side // 2), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    colour = rng.uniform(0, 255, 3)
    texture = rng.normal(0, rng.uniform(5, 40), (side, side, 1))
    sprite = np.clip(colour + texture, 0, 255).astype(np.float32)
    return sprite, cv2.GaussianBlur(mask, (3, 3), 0)


def _paste(frame: np.ndarray, sprite: np.ndarray, mask: np.ndarray, left: float, top: float) -> None:
    """Alpha-blend `sprite` into `frame` (float32, in place) with its top-left corner at (left, top)."""
    side = sprite.shape[0]
    x0, y0 = int(round(left)), int(round(top))
    x1, y1 = max(0, x0), max(0, y0)
    x2, y2 = min(frame.shape[1], x0 + side), min(frame.shape[0], y0 + side)
    if x2 <= x1 or y2 <= y1:
        return
    alpha = mask[y1 - y0:y2 - y0, x1 - x0:x2 - x0, None]
    region = frame[y1:y2, x1:x2]
    frame[y1:y2, x1:x2] = region * (1 - alpha) + sprite[y1 - y0:y2 - y0, x1 - x0:x2 - x0] * alpha
