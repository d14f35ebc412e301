"""The pytorchvideo extra, in its own environment (``make test-extras``): hub models built by
``pytorchvideo.models``, tapped by module path, trained, fitted and evaluated like clipwatch's own."""

import json

import pytest
import torch

from pipeline.cli import main
from pipeline.data import synthesize
from pipeline.models import build_model, default_layers, load_model
from pipeline.models.pytorchvideo import HUB
from pipeline.models.taps import FeatureTap

CLASSES = ["MoveLeft", "MoveRight", "Grow", "Shrink"]


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_models_build_and_return_logits(name):
    entry = HUB[name]
    model = build_model(name, 3).eval()
    clips = torch.randn(2, 3, entry.clip_len, entry.crop, entry.crop)
    with FeatureTap(model, default_layers(name)) as tap:
        logits, features = tap(clips)
    assert logits.shape == (2, 3) and torch.allclose(features[default_layers(name)[-1]], logits)
    assert not torch.allclose(logits.sum(dim=1), torch.ones(2))  # no softmax in the head: logits, not probabilities


def test_x3d_s_is_tapped_by_module_path():
    model = build_model("x3d_s", 4).eval()
    with FeatureTap(model, ["blocks.4", "blocks.5"]) as tap:
        logits, features = tap(torch.randn(2, 3, 13, 182, 182))
    assert features["blocks.4"].shape[0] == 2 and features["blocks.4"].ndim == 2
    assert torch.allclose(features["blocks.5"], logits)


def test_x3d_s_trains_fits_and_evaluates(tmp_path):
    data = tmp_path / "data"
    synthesize(data, videos_per_class=8, seed=5, width=96, height=72, num_frames=120, classes=CLASSES,
               novel_classes=["Orbit"], novel_videos_per_class=3, progress=False)
    model_dir, bundle, results = tmp_path / "model", tmp_path / "bundle", tmp_path / "results"
    assert main(["train", str(data), "--out", str(model_dir), "--init", "pytorchvideo:x3d_s", "--epochs", "1",
                 "--clips-per-video", "1", "--batch-size", "4", "--no-progress"]) == 0
    model, manifest = load_model(model_dir)
    assert manifest.architecture == "x3d_s" and manifest.preprocessing.clip_len == 13
    assert manifest.preprocessing.crop == 182 and set(manifest.class_names) == set(CLASSES)
    assert main(["fit", "--model", str(model_dir), "--data", str(data), "--out", str(bundle),
                 "--layers", "blocks.4", "blocks.5", "--stride", "16", "--false-alarm", "0.2", "--no-progress"]) == 0
    assert main(["evaluate", "--bundle", str(bundle), "--data", str(data), "--out", str(results),
                 "--attacks", "fgsm", "--surrogate", "none", "--detectors", "msp,energy", "--no-progress"]) == 0
    report = json.loads((results / "results.json").read_text())
    found = {(r["ood_set"], r["layer"], r["density"]) for r in report["detection"]}
    assert {("novel", "blocks.4", "gmm"), ("fgsm", "blocks.4", "tied"), ("novel", "output", "energy")} <= found
    assert all(0 <= r["auroc"] <= 1 for r in report["detection"])
