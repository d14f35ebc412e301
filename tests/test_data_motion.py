"""Each synthetic class really is its motion: measured on the rendered actor's coverage mask, over several seeds.

Also checks that a single frame cannot tell paired classes apart: MoveLeft is MoveRight played backwards.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.data import SYNTH_CLASSES, SYNTH_NOVEL_CLASSES
from pipeline.data.motions import sample_spec, trajectory
from pipeline.data.render import SourceImagery, render_video
from pipeline.data.synth import video_rng

WIDTH, HEIGHT, FRAMES = 160, 120, 32
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def imagery() -> SourceImagery:
    return SourceImagery(HEIGHT)


def coverage_of(class_name: str, seed: int, imagery: SourceImagery) -> np.ndarray:
    spec = sample_spec(class_name, video_rng(seed, class_name, 1, 1), WIDTH, HEIGHT, FRAMES)
    frames, coverage = render_video(spec, imagery)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    return coverage


def centres(coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre of mass (x, y) and area of the actor."""
    area = coverage.sum(axis=(1, 2))
    x = (coverage.sum(axis=1) * np.arange(WIDTH)).sum(axis=1) / np.maximum(area, 1e-9)
    y = (coverage.sum(axis=2) * np.arange(HEIGHT)).sum(axis=1) / np.maximum(area, 1e-9)
    return x, y, area


def turn_between(before: np.ndarray, after: np.ndarray) -> float:
    """The rotation (degrees, counter-clockwise positive) that best maps one actor mask onto the next."""
    x0, y0, _ = centres(before[None])
    x1, y1, _ = centres(after[None])
    best, best_angle = -1.0, 0.0
    for angle in np.arange(-20.0, 20.5, 1.0):
        matrix = cv2.getRotationMatrix2D((float(x0[0]), float(y0[0])), float(angle), 1.0)
        matrix[:, 2] += (x1[0] - x0[0], y1[0] - y0[0])
        overlap = float((cv2.warpAffine(before, matrix, (WIDTH, HEIGHT)) * after).sum())
        if overlap > best:
            best, best_angle = overlap, float(angle)
    return best_angle


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("class_name, axis, sign", [
    ("MoveRight", 0, 1), ("MoveLeft", 0, -1), ("MoveDown", 1, 1), ("MoveUp", 1, -1)])
def test_moves_go_their_way(imagery, seed: int, class_name: str, axis: int, sign: int) -> None:
    x, y, area = centres(coverage_of(class_name, seed, imagery))
    along, across = (x, y) if axis == 0 else (y, x)
    steps = np.diff(along)
    assert sign * (along[-1] - along[0]) > 0.2 * (WIDTH if axis == 0 else HEIGHT)
    assert (sign * steps > -2.0).all()  # only camera shake may push it back a little
    assert np.ptp(across) < 4.0 and area.min() > 0.5 * area.max()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("class_name, sign", [("RotateClockwise", -1), ("RotateCounterClockwise", 1)])
def test_rotations_turn_their_way_in_place(imagery, seed: int, class_name: str, sign: int) -> None:
    coverage = coverage_of(class_name, seed, imagery)
    turns = [turn_between(coverage[t], coverage[t + 2]) for t in range(0, FRAMES - 2, 3)]
    assert sign * np.median(turns) >= 4.0, turns
    x, y, area = centres(coverage)
    assert np.ptp(area) < 0.25 * area.mean()
    assert np.hypot(x - x.mean(), y - y.mean()).max() < 6.0


@pytest.mark.parametrize("seed", SEEDS)
def test_sizes_change_as_named(imagery, seed: int) -> None:
    for class_name, sign in (("Grow", 1), ("Shrink", -1)):
        area = centres(coverage_of(class_name, seed, imagery))[2]
        assert (sign * np.diff(area) > 0).mean() > 0.9 and area.max() > 1.8 * area.min(), class_name
    area = centres(coverage_of("ApproachAndRetreat", seed, imagery))[2]
    top = int(np.argmax(area))
    assert 0.25 * FRAMES < top < 0.75 * FRAMES
    assert area[top] > 1.3 * area[0] and area[top] > 1.3 * area[-1]


@pytest.mark.parametrize("seed", SEEDS)
def test_stand_still_stays(imagery, seed: int) -> None:
    coverage = coverage_of("StandStill", seed, imagery)
    x, y, area = centres(coverage)
    assert np.ptp(x) < 4.0 and np.ptp(y) < 4.0 and np.ptp(area) < 0.25 * area.mean()
    assert abs(np.median([turn_between(coverage[t], coverage[t + 2]) for t in range(0, FRAMES - 2, 3)])) <= 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_novel_motions(imagery, seed: int) -> None:
    x, y, _ = centres(coverage_of("Orbit", seed, imagery))
    radius = np.hypot(x - x.mean(), y - y.mean())
    assert radius.min() > 0.1 * HEIGHT and np.ptp(radius) < 0.5 * radius.mean()
    sweep = np.abs(np.diff(np.unwrap(np.arctan2(y - y.mean(), x - x.mean())))).sum()
    assert sweep > np.pi  # more than half a turn within the video

    x, y, _ = centres(coverage_of("ZigZag", seed, imagery))
    assert abs(x[-1] - x[0]) > 0.2 * WIDTH
    vertical = np.sign(np.diff(y))
    assert (vertical[1:] != vertical[:-1]).sum() >= 2  # turns up/down at least twice

    x, y, area = centres(coverage_of("Blink", seed, imagery))
    shown = area > 0
    assert 0.25 < shown.mean() < 0.75 and (shown[1:] != shown[:-1]).sum() >= 3
    assert np.ptp(x[shown]) < 4.0 and np.ptp(y[shown]) < 4.0


@pytest.mark.parametrize("seed", SEEDS)
def test_paired_classes_share_single_frame_statistics(seed: int) -> None:
    """Drawn from the same random stream, the pair's poses are the same set of frames in reverse order."""
    for forward, backward, field in (("MoveRight", "MoveLeft", "cx"), ("MoveDown", "MoveUp", "cy"),
                                     ("Grow", "Shrink", "size")):
        ahead = trajectory(sample_spec(forward, np.random.default_rng(seed), WIDTH, HEIGHT, FRAMES))
        behind = trajectory(sample_spec(backward, np.random.default_rng(seed), WIDTH, HEIGHT, FRAMES))
        np.testing.assert_allclose(getattr(ahead, field), getattr(behind, field)[::-1])
        assert not np.allclose(getattr(ahead, field), getattr(behind, field))


def test_class_names_are_distinct_camel_case() -> None:
    names = SYNTH_CLASSES + SYNTH_NOVEL_CLASSES
    assert len(set(names)) == len(names) == 13
    assert all(name.isalnum() and name[0].isupper() for name in names)
