"""A hand-crafted baseline for a static-camera UCF101-layout dataset: is the task learnable without deep features?

Per video: median background, the moving pixels' centroid and spread at every frame, then velocity, acceleration,
turning and size-change statistics of that trajectory; a logistic regression on the training list, accuracy on the
test list of the split (--split, default 1). Prints video accuracy beside chance. What a 3D CNN should at least match on such data.

    .venv/bin/python benchmarks/trajectory_baseline.py DATA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import UCF101  # noqa: E402
from pipeline.video import open_video  # noqa: E402


def trajectory_features(frames: np.ndarray) -> np.ndarray:
    """Statistics of the foreground's centroid, spread and area over time (frames: (T, H, W, 3) uint8)."""
    grey = frames.astype(np.float32).mean(axis=3)
    background = np.median(grey, axis=0)
    moving = np.abs(grey - background) > 25
    height, width = grey.shape[1:]
    ys, xs = np.mgrid[0:height, 0:width]
    rows = []
    for mask in moving:
        area = mask.sum()
        if area < 3:
            rows.append(rows[-1] if rows else (width / 2, height / 2, 0.0, 0.0))
            continue
        cx, cy = xs[mask].mean(), ys[mask].mean()
        rows.append((cx, cy, np.sqrt(area), np.hypot(xs[mask].std(), ys[mask].std())))
    path = np.asarray(rows) / np.array([width, height, height, height])
    velocity = np.diff(path[:, :2], axis=0)
    acceleration = np.diff(velocity, axis=0)
    heading = np.unwrap(np.arctan2(velocity[:, 1], velocity[:, 0] + 1e-9))
    speed = np.linalg.norm(velocity, axis=1)
    parts = [path.std(axis=0), np.ptp(path, axis=0), np.abs(velocity).mean(axis=0), velocity.mean(axis=0),
             np.abs(acceleration).mean(axis=0), [speed.mean(), speed.std(), (speed < 0.002).mean()],
             [np.abs(np.diff(heading)).mean(), np.diff(heading).mean()],
             [np.polyfit(np.arange(len(path)), path[:, 2], 1)[0], np.abs(np.diff(path[:, 2])).mean()],
             np.abs(np.fft.rfft(path[:, 1] - path[:, 1].mean()))[1:8] / len(path),
             np.abs(np.fft.rfft(path[:, 0] - path[:, 0].mean()))[1:8] / len(path)]
    return np.concatenate([np.ravel(part) for part in parts])


def features(samples) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for sample in samples:
        with open_video(sample.path) as reader:
            rows.append(trajectory_features(reader.get_frames(range(reader.num_frames))))
        labels.append(sample.label)
    return np.asarray(rows), np.asarray(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--split", type=int, default=1)
    args = parser.parse_args()
    train = UCF101(args.data, split=args.split, subset="train")
    test = UCF101(args.data, split=args.split, subset="test")
    x_train, y_train = features(train.samples)
    x_test, y_test = features(test.samples)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0)).fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())
    print(f"{args.data}: trajectory baseline video accuracy {accuracy:.3f} on {len(y_test)} test videos "
          f"(chance {1 / len(train.classes):.3f}; {len(y_train)} training videos)")


if __name__ == "__main__":
    main()
