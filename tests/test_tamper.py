"""Camera-tampering sets: each does what its name says, leaves the input alone and is reproducible from its seed."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.tamper import TAMPERING, tamper
from pipeline.errors import ClipwatchError


def textured_clips(n: int = 6, length: int = 16, side: int = 40, seed: int = 0) -> np.ndarray:
    """Clips of a fixed random texture with a bright square moving right: detail to blur, shift and darken."""
    rng = np.random.default_rng(seed)
    clips = np.repeat(rng.integers(40, 200, (n, 1, side, side, 3), dtype=np.uint8), length, axis=1)
    for t in range(length):
        clips[:, t, 10:18, 5 + t:13 + t] = 250
    return clips


def sharpness(frames: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours."""
    return float(np.abs(np.diff(frames.astype(np.float32), axis=-2)).mean())


def changed_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=(2, 3, 4))


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_keeps_shape_and_input_and_is_reproducible(kind):
    clips = textured_clips()
    before = clips.copy()
    out = tamper(clips, kind, seed=3)
    assert out.shape == clips.shape and out.dtype == np.uint8
    assert np.array_equal(clips, before)
    assert np.array_equal(out, tamper(clips, kind, seed=3))
    assert not np.array_equal(out, tamper(clips, kind, seed=4))
    assert changed_frames(clips, out).any(axis=1).all()  # every clip is tampered with


def test_events_start_in_the_first_half_and_last_to_the_end():
    clips = textured_clips()
    for kind in ("covered", "redirect", "lighting"):
        changed = changed_frames(clips, tamper(clips, kind))
        for row in changed:
            start = int(np.argmax(row))
            assert start < clips.shape[1] // 2 and row[start:].all() and not row[:start].any(), kind
        at = tamper(clips, kind, start=5)
        assert (changed_frames(clips, at) == (np.arange(clips.shape[1]) >= 5)).all(), kind


def test_each_kind_does_what_it_says():
    clips = textured_clips()
    dark = tamper(clips, "covered")
    assert dark[:, -1].mean() < 0.3 * clips[:, -1].mean() and sharpness(dark[:, -1]) < 0.2 * sharpness(clips[:, -1])
    blurred = tamper(clips, "defocus")
    assert sharpness(blurred) < 0.7 * sharpness(clips)
    assert abs(float(blurred.mean()) - float(clips.mean())) < 2  # blur, not darkening
    lit = tamper(clips, "lighting")
    ratios = lit[:, -1].astype(np.float32).mean(axis=(1, 2, 3)) / clips[:, -1].mean(axis=(1, 2, 3))
    assert np.all((ratios < 0.6) | (ratios > 1.5))
    shaken = tamper(clips, "shake")  # whole frames move: each is the original shifted by at most 2 px (5 % of 40)
    shifts = []
    for frame, original in zip(shaken[0], clips[0], strict=True):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(frame[5:-5, 5:-5], np.roll(original, (dy, dx), axis=(0, 1))[5:-5, 5:-5])]
        assert found, "a shaken frame is not a shifted original"
        shifts.append(found[0])
    assert len(set(shifts)) > 3  # independent shifts per frame
    turned = tamper(clips, "redirect")
    moved = [np.abs(turned[i, -1].astype(int) - clips[i, -1]).mean() for i in range(len(clips))]
    assert min(moved) > 10


def test_bad_requests_are_refused_in_one_line():
    with pytest.raises(ClipwatchError, match="unknown tampering 'smoke'; choose from covered"):
        tamper(textured_clips(), "smoke")
    with pytest.raises(ClipwatchError, match=r"uint8 clips \(N, T, H, W, 3\)"):
        tamper(textured_clips().astype(np.float32), "defocus")
    assert tamper(textured_clips()[:0], "shake").shape == (0, 16, 40, 40, 3)
    with pytest.raises(ClipwatchError, match="start 16 is outside the clips' 16 frames"):
        tamper(textured_clips(), "covered", start=16)
