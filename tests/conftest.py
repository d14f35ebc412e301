"""Shared fixtures: a tiny synthetic dataset on disk, a tiny saved model, and a detector bundle fitted on them."""

import pytest
import torch

from pipeline.cli import main
from pipeline.data import synthesize
from pipeline.models import build_model, save_model

CLASSES = ["MoveLeft", "MoveRight", "Grow"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, videos_per_class=8, seed=3, width=56, height=32, num_frames=24, classes=CLASSES,
               novel_classes=["Orbit"], novel_videos_per_class=3, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("r3d-10", len(CLASSES), width=4)
    directory = tmp_path_factory.mktemp("model")
    save_model(model, directory, architecture="r3d-10", options={"width": 4}, num_classes=len(CLASSES),
               class_names=CLASSES, preprocessing={"clip_len": 8, "frame_step": 1, "short_side": 32, "crop": 32,
                                                   "mean": (0.45, 0.45, 0.45), "std": (0.225, 0.225, 0.225)})
    return directory


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    code = main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out),
                 "--layers", "layer3", "layer4", "fc", "--no-progress", "--false-alarm", "0.1"])
    assert code == 0
    return out
