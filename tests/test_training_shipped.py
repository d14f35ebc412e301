"""The shipped models: load by name, stay small, carry their training record, and classify freshly generated
synthetic videos (another seed than their training data) through the inference path (open_video, ClipSplitter,
preprocess with the manifest's settings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.data import SYNTH_CLASSES, UCF101, synthesize
from pipeline.models import load_model, shipped_model_dir
from pipeline.video import ClipSplitter, iter_file_clips, open_video, preprocess

torch.set_num_threads(1)

MAX_BYTES = 10 * 1024 * 1024
FRESH_SEED = 2024  # the shipped models' training data is seed 0
# Regression floors of the recorded test clip accuracy: the default (default preset, seed 1) has 0.936 against the
# 0.9 target; the surrogate (default-v1 recipe, seed 0) has 0.893. Fresh videos are held to the floor minus 0.1.
ACCURACY_FLOOR = {"default": 0.9, "default-surrogate": 0.85}


@pytest.fixture(scope="module")
def fresh_videos(tmp_path_factory: pytest.TempPathFactory) -> list:
    root = tmp_path_factory.mktemp("fresh") / "synth"
    synthesize(root, videos_per_class=1, seed=FRESH_SEED, novel_classes=(), progress=False)
    samples = UCF101(root, subset="train").samples + UCF101(root, subset="test").samples
    assert sorted(sample.class_name for sample in samples) == sorted(SYNTH_CLASSES)
    return samples


@pytest.mark.parametrize("name", ["default", "default-surrogate"])
def test_shipped_model_is_small_and_documented(name):
    directory = shipped_model_dir(name)
    model, manifest = load_model(name)
    assert manifest.class_names == SYNTH_CLASSES
    assert (directory / "model.safetensors").stat().st_size <= MAX_BYTES
    assert sum(path.stat().st_size for path in directory.iterdir()) <= MAX_BYTES
    metrics = json.loads((directory / "metrics.json").read_text())
    training = manifest.extra["training"]
    assert metrics["test_clip_accuracy"] == training["test_clip_accuracy"] >= ACCURACY_FLOOR[name]
    assert (metrics["config"]["model"], metrics["config"]["model_options"]) == (manifest.architecture, manifest.options)
    assert manifest.preprocessing.fit == "crop" and manifest.preprocessing.model_dump(mode="json") == {
        key: metrics["config"][key] for key in ("clip_len", "frame_step", "short_side", "crop", "mean", "std")}


def test_default_and_surrogate_differ():
    _, default = load_model("default")
    _, surrogate = load_model("default-surrogate")
    assert default.sha256 != surrogate.sha256
    assert default.extra["training"]["seed"] != surrogate.extra["training"]["seed"]
    assert (default.architecture, default.options) != (surrogate.architecture, surrogate.options)


@pytest.mark.parametrize("name", ["default", "default-surrogate"])
def test_shipped_model_classifies_fresh_synthetic_videos(name, fresh_videos):
    model, manifest = load_model(name)
    settings = manifest.preprocessing
    splitter = ClipSplitter(settings.clip_len, 16, settings.frame_step)
    clip_hits, video_hits, clips = 0, 0, 0
    for sample in fresh_videos:
        with open_video(sample.path) as reader:
            frames = np.stack([clip.frames for clip in iter_file_clips(reader, splitter)])
        batch = preprocess(frames, short_side=settings.short_side, crop=settings.crop, mean=settings.mean,
                           std=settings.std)
        with torch.no_grad():
            probabilities = model(batch).softmax(dim=1)
        clip_hits += int((probabilities.argmax(dim=1) == sample.label).sum())
        video_hits += int(probabilities.mean(dim=0).argmax() == sample.label)
        clips += len(batch)
    assert clips == 2 * len(fresh_videos)
    floor = ACCURACY_FLOOR[name] - 0.1
    assert clip_hits / clips >= floor and video_hits / len(fresh_videos) >= floor, (clip_hits, video_hits)


def test_base_backbone_is_shipped_small_and_starts_fine_tuning():
    from pipeline.data.pretrain import PRETRAIN_CLASSES
    from pipeline.training.transfer import read_init

    directory = shipped_model_dir("base")
    model, manifest = load_model("base")
    assert manifest.class_names == PRETRAIN_CLASSES  # the 81 motion combinations of the pretraining corpus
    assert sum(path.stat().st_size for path in directory.iterdir()) <= MAX_BYTES
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["config"]["factors"] and metrics["test_clip_accuracy"] > 10 / len(PRETRAIN_CLASSES)
    init = read_init("base")
    assert init.manifest.sha256 == manifest.sha256 and "fc.weight" in init.state
