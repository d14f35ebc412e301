"""Camera tampering as far-OOD test sets: what happens to a camera rather than in front of it.

Each transform takes uint8 clips ``(N, T, H, W, 3)`` (any size; `clipwatch evaluate` applies them to its test clips
at the model's input size) and returns tampered copies; the input is never modified. Parameters are drawn per clip
from ``seed``, so a set is reproducible. Where the tampering is an event, it starts at a random frame of the clip's
first half (or at a given frame) and lasts to its end, as when it happens during a recording:

- ``covered``: something is put over the lens: the picture goes dark and featureless (heavily blurred, 10-25 % of
  its brightness, a little sensor noise);
- ``defocus``: the lens is out of focus for the whole clip (Gaussian blur, sigma 1.5-3 % of the frame's short side:
  1.2-2.4 px at 80 px);
- ``shake``: the camera is knocked about: every frame shifted by up to 5 % of the frame, independently;
- ``redirect``: the camera is turned: from the event on, the view is shifted by 20-35 % of the frame (edges repeated);
- ``lighting``: the lights change: from the event on, every pixel is multiplied by 0.3-0.55 or 1.8-2.5.

None of these is used for training, calibration or choosing any setting.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pipeline.errors import ClipwatchError

Transform = Callable[[np.ndarray, np.random.Generator, "int | None"], np.ndarray]


def _event_start(rng: np.random.Generator, length: int, start: int | None) -> int:
    """The event's first frame: ``start`` if given, else a random frame of the clip's first half (drawn either way,
    as before ``start`` existed)."""
    drawn = int(rng.integers(0, max(1, length // 2)))
    return drawn if start is None else start


def _blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def _shift(frame: np.ndarray, dy: int, dx: int) -> np.ndarray:
    height, width = frame.shape[:2]
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


def covered(clip: np.ndarray, rng: np.random.Generator, start: int | None = None) -> np.ndarray:
    out = clip.copy()
    start = _event_start(rng, len(clip), start)
    gain = rng.uniform(0.10, 0.25)
    sigma = min(clip.shape[1:3]) / 4
    for t in range(start, len(clip)):
        dark = _blur(clip[t], sigma).astype(np.float32) * gain + rng.normal(0, 1.5, clip[t].shape)
        out[t] = np.clip(np.rint(dark), 0, 255).astype(np.uint8)
    return out


def defocus(clip: np.ndarray, rng: np.random.Generator, start: int | None = None) -> np.ndarray:
    sigma = rng.uniform(0.015, 0.03) * min(clip.shape[1:3])
    return np.stack([_blur(frame, sigma) for frame in clip])


def shake(clip: np.ndarray, rng: np.random.Generator, start: int | None = None) -> np.ndarray:
    reach = max(1, round(0.05 * min(clip.shape[1:3])))
    return np.stack([_shift(frame, *rng.integers(-reach, reach + 1, size=2)) for frame in clip])


def redirect(clip: np.ndarray, rng: np.random.Generator, start: int | None = None) -> np.ndarray:
    out = clip.copy()
    start = _event_start(rng, len(clip), start)
    side = min(clip.shape[1:3])
    distance = rng.uniform(0.20, 0.35) * side
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = round(distance * np.sin(angle)), round(distance * np.cos(angle))
    for t in range(start, len(clip)):
        out[t] = _shift(clip[t], dy, dx)
    return out


def lighting(clip: np.ndarray, rng: np.random.Generator, start: int | None = None) -> np.ndarray:
    out = clip.copy()
    start = _event_start(rng, len(clip), start)
    gain = rng.uniform(0.30, 0.55) if rng.random() < 0.5 else rng.uniform(1.8, 2.5)
    out[start:] = np.clip(np.rint(clip[start:].astype(np.float32) * gain), 0, 255).astype(np.uint8)
    return out


TAMPERING: dict[str, Transform] = {"covered": covered, "defocus": defocus, "shake": shake, "redirect": redirect,
                                   "lighting": lighting}
"""The tampering kinds, by name (``clipwatch evaluate --tamper``)."""


def tamper(clips: np.ndarray, kind: str, seed: int = 0, *, start: int | None = None) -> np.ndarray:
    """Tampered copies of uint8 clips ``(N, T, H, W, 3)``; an event starts at frame ``start`` when given (else at a
    random frame of each clip's first half). ClipwatchError (one line) for an unknown kind or bad clips."""
    if kind not in TAMPERING:
        raise ClipwatchError(f"unknown tampering {kind!r}; choose from {', '.join(TAMPERING)}")
    clips = np.asarray(clips)
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise ClipwatchError(f"tampering needs uint8 clips (N, T, H, W, 3), got {clips.dtype} {clips.shape}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, list(TAMPERING).index(kind)]))
    transform = TAMPERING[kind]
    if start is not None and not 0 <= start < clips.shape[1]:
        raise ClipwatchError(f"tampering start {start} is outside the clips' {clips.shape[1]} frames")
    return np.stack([transform(clip, rng, start) for clip in clips]) if len(clips) else clips.copy()
