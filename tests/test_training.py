"""CPU training: config and presets, cache/preprocess equality, augmentation, schedule, end-to-end runs, exact resume,
pickle-free checkpoints, and the ``clipwatch train`` command. Everything runs on a tiny real dataset in seconds."""

from __future__ import annotations

import argparse
import json
import math
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import pipeline.training.trainer as trainer_module
from pipeline.cli.train import build_config, register
from pipeline.data import SYNTH_CLASSES, UCF101, DatasetError, VideoSample, write_annotations
from pipeline.data.motions import sample_spec, trajectory
from pipeline.models import build_model, load_model
from pipeline.models.errors import WeightsError
from pipeline.training import (
    PRESETS,
    ClipCache,
    ClipSampler,
    TrainConfig,
    TrainingError,
    eval_clips,
    latest_checkpoint,
    load_checkpoint,
    train,
)
from pipeline.training.init import motion_energy_init
from pipeline.training.optim import learning_rate, make_optimizer
from pipeline.training.symmetry import SYNTH_SYMMETRIES, apply_transform
from pipeline.training.transfer import read_init, transfer_weights
from pipeline.training.validation import Best, validation_split
from pipeline.video import ClipSplitter, open_video, preprocess
from pipeline.video.preprocess import resize_frames

torch.set_num_threads(1)

COLOURS = {"Red": (220, 40, 40), "Green": (40, 200, 60), "Blue": (40, 60, 220)}
WIDTH, HEIGHT, FRAMES = 64, 48, 32
TRAIN_GROUPS, TEST_GROUPS = (8, 9, 10, 11), (1, 2)


def write_video(path: Path, frames: np.ndarray) -> None:
    """Encode RGB frames as an MJPEG AVI with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def colour_video(colour: tuple[int, int, int], rng: np.random.Generator, num_frames: int = FRAMES) -> np.ndarray:
    """Grey noise tinted with the class colour, under a drifting white square: an easy case, the class is the tint."""
    noise = rng.integers(40, 200, size=(HEIGHT // 4, WIDTH // 4, 1)).repeat(4, 0).repeat(4, 1).repeat(3, 2)
    background = (0.6 * noise + 0.4 * np.asarray(colour)).astype(np.uint8)
    x, y = rng.integers(4, WIDTH - 24), rng.integers(4, HEIGHT - 20)
    vx, vy = rng.choice([-1, 0, 1], size=2)
    frames = np.empty((num_frames, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = background
        left = int(np.clip(x + vx * t // 2, 0, WIDTH - 16))
        top = int(np.clip(y + vy * t // 2, 0, HEIGHT - 16))
        frames[t, top:top + 16, left:left + 16] = 255
    return frames


def write_colour_data(root: Path, num_frames: int = FRAMES) -> Path:
    """Red/Green/Blue in the UCF101 layout: 4 training and 2 test videos per class, plus one corrupt and one
    too-short training video that training must skip and report."""
    rng = np.random.default_rng(0)
    videos = []
    for name, colour in COLOURS.items():
        for group in TRAIN_GROUPS + TEST_GROUPS:
            write_video(root / name / f"v_{name}_g{group:02d}_c01.avi", colour_video(colour, rng, num_frames))
            videos.append((name, group, 1))
    (root / "Red" / "v_Red_g12_c01.avi").write_bytes(b"RIFF not really a video" * 50)
    write_video(root / "Blue" / "v_Blue_g12_c01.avi", colour_video(COLOURS["Blue"], rng, num_frames=6))
    videos += [("Red", 12, 1), ("Blue", 12, 1)]
    write_annotations(root, list(COLOURS), videos)
    return root


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_data(tmp_path_factory.mktemp("colours") / "data")


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(model="r3d-10", model_options={"width": 4, "zero_init_residual": True}, clip_len=8,
                    frame_step=2, short_side=36, crop=32, eval_stride=8, epochs=3, clips_per_video=4, batch_size=4,
                    lr=5e-3, warmup_epochs=0.5, threads=1, paired_symmetries=False, motion_init=False)
    return TrainConfig.preset("default", data=data, out=out, **{**settings, **changes})


def test_presets_and_one_line_config_errors(tmp_path):
    config = TrainConfig.preset("default", data=tmp_path, out=tmp_path / "run")
    assert (config.model, config.model_options["width"], config.clip_len, config.crop) == ("r3d-18", 12, 16, 80)
    assert config.model_options["zero_init_residual"] is True
    assert config.preprocessing()["clip_len"] == 16 and config.span == 31
    assert TrainConfig.parse(config.to_json()) == config
    smoke = TrainConfig.preset("smoke", data=tmp_path, out=tmp_path, seed=3)
    assert (smoke.model, smoke.seed) == ("r3d-10", 3)
    for bad, words in [({"lr": -1.0}, "lr"), ({"crop": 96}, "crop 96"), ({"optimizer": "adam"}, "optimizer"),
                       ({"symmetries": {"reverse_time": {"A": "B"}}}, "involution"),
                       ({"symmetries": {"rotate": {}}}, "unknown symmetry"), ({"batch": 3}, "batch"),
                       ({"freeze_through": "layer3"}, "keeps an init's weights")]:
        with pytest.raises(TrainingError) as info:
            TrainConfig.preset("default", data=tmp_path, out=tmp_path, **bad)
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TrainingError, match="unknown training preset 'fast'"):
        TrainConfig.preset("fast", data=tmp_path, out=tmp_path)


def test_eval_clips_equal_preprocess_of_decoded_frames(colour_data):
    config = tiny_config(colour_data, colour_data / "unused", short_side=40, crop=32, eval_stride=5)
    path = colour_data / "Green" / "v_Green_g01_c01.avi"
    with open_video(path) as reader:
        raw = reader.get_frames(np.arange(reader.num_frames))
    sample = VideoSample(path=path, label=1, class_name="Green", group=1, clip=1)
    cache = ClipCache.build([sample], config.short_side, config.span, progress=False)
    plan = ClipSplitter(config.clip_len, config.eval_stride, config.frame_step).plan(len(raw))
    expected = preprocess(raw[np.stack(plan)], short_side=40, crop=32, mean=config.mean, std=config.std)
    actual = eval_clips(cache.frames[0], config)
    assert actual.shape == (len(plan), 3, 8, 32, 32) and len(plan) == 4
    assert torch.equal(actual, expected)
    assert torch.equal(resize_frames(raw, 40), cache.frames[0])


def noise_cache(num_videos: int = 2, length: int = 20, height: int = 12, width: int = 14) -> ClipCache:
    generator = torch.Generator().manual_seed(5)
    frames = [torch.randint(0, 256, (length, height, width, 3), dtype=torch.uint8, generator=generator)
              for _ in range(num_videos)]
    return ClipCache(frames, torch.arange(num_videos) % 2, [f"v{i}" for i in range(num_videos)])


def locate(clip: torch.Tensor, frames: torch.Tensor, config: TrainConfig) -> set[tuple[int, int, int, bool]]:
    """Every (start, top, left, reversed) whose crop of ``frames``, normalised, equals ``clip``."""
    scale = 1.0 / torch.tensor(config.std).view(3, 1, 1, 1)
    shift = -torch.tensor(config.mean).view(3, 1, 1, 1) * scale
    found = set()
    length, height, width, _ = frames.shape
    for start in range(length - config.span + 1):
        for top in range(height - config.crop + 1):
            for left in range(width - config.crop + 1):
                crop = frames[start:start + config.span:config.frame_step, top:top + config.crop,
                              left:left + config.crop]
                for reverse in (False, True):
                    chosen = crop.flip(0) if reverse else crop
                    candidate = chosen.permute(3, 0, 1, 2).float() / 255 * scale + shift
                    if torch.allclose(candidate, clip, atol=1e-5):
                        found.add((start, top, left, reverse))
    return found


def test_training_clips_are_random_crops_never_mirrored(tmp_path):
    cache = noise_cache()
    config = tiny_config(tmp_path, tmp_path, clip_len=4, frame_step=3, short_side=10, crop=10, brightness=0.0,
                         contrast=0.0, symmetries={})
    sampler = ClipSampler(cache, config, ["A", "B"])
    generator = torch.Generator().manual_seed(0)
    positions = set()
    for _ in range(6):
        clips, labels = sampler.batch(torch.tensor([0, 1]), generator)
        assert clips.shape == (2, 3, 4, 10, 10) and labels.tolist() == [0, 1]
        for clip, video in zip(clips, (0, 1), strict=True):
            found = locate(clip, cache.frames[video], config)
            assert found and not any(reverse for *_, reverse in found)
            positions |= {position[:3] for position in found}
    assert len(positions) > 3, "start and crop should vary from draw to draw"


def test_symmetry_reverses_time_and_maps_the_label(tmp_path):
    cache = noise_cache()
    config = tiny_config(tmp_path, tmp_path, clip_len=4, frame_step=3, short_side=10, crop=10, brightness=0.0,
                         contrast=0.0, symmetries={"reverse_time": {"A": "B", "B": "A"}})
    sampler = ClipSampler(cache, config, ["A", "B"])
    generator = torch.Generator().manual_seed(1)
    outcomes = set()
    for _ in range(8):
        clips, labels = sampler.batch(torch.tensor([0]), generator)
        found = locate(clips[0], cache.frames[0], config)
        reversed_clip = all(reverse for *_, reverse in found)
        assert found and reversed_clip == (labels.item() == 1)
        outcomes.add(reversed_clip)
    assert outcomes == {False, True}
    untouched = ClipSampler(cache, config, ["A", "C"])  # class C is in no table: label and clip stay as they are
    for _ in range(4):
        clips, labels = untouched.batch(torch.tensor([1]), generator)
        assert labels.item() == 1 and not any(r for *_, r in locate(clips[0], cache.frames[1], config))


def test_stretch_training_clips_are_random_crops_of_the_squared_frames_and_evaluation_matches_preprocess(tmp_path):
    cache = noise_cache(height=12, width=16)
    config = tiny_config(tmp_path, tmp_path, clip_len=4, frame_step=3, short_side=12, crop=10, fit="stretch",
                         brightness=0.0, contrast=0.0, symmetries={}, temporal_jitter=True)
    assert config.preprocessing()["fit"] == "stretch"
    sampler = ClipSampler(cache, config, ["A", "B"])
    generator = torch.Generator().manual_seed(0)
    squared = [resize_frames(frames, 12, size=(12, 12)) for frames in cache.frames]
    positions = set()
    for _ in range(6):
        clips, _ = sampler.batch(torch.tensor([0, 1]), generator)
        for clip, video in zip(clips, (0, 1), strict=True):
            found = locate(clip, squared[video], config)
            assert found, "a window of the whole frame squeezed to a square"
            positions |= {position[:3] for position in found}
    assert len(positions) > 3
    plan = ClipSplitter(config.clip_len, config.eval_stride, config.frame_step).plan(cache.frames[0].shape[0])
    expected = preprocess(cache.frames[0][np.stack(plan)], short_side=12, crop=10, mean=config.mean, std=config.std,
                          fit="stretch")
    assert torch.equal(eval_clips(cache.frames[0], config), expected)


def test_zoom_augmentation_scales_random_square_windows_up_to_the_crop(tmp_path):
    cache = noise_cache(num_videos=1, length=12, height=10, width=12)
    config = tiny_config(tmp_path, tmp_path, clip_len=3, frame_step=2, short_side=10, crop=8, min_scale=0.6,
                         brightness=0.0, contrast=0.0, symmetries={})
    sampler = ClipSampler(cache, config, ["A"])
    generator = torch.Generator().manual_seed(2)
    frames = cache.frames[0]
    scale = 1.0 / torch.tensor(config.std).view(3, 1, 1, 1)
    shift = -torch.tensor(config.mean).view(3, 1, 1, 1) * scale
    sides = set()
    for _ in range(8):
        clip = sampler.batch(torch.tensor([0]), generator)[0][0]
        found = set()
        for start in range(12 - config.span + 1):
            for side in range(6, 11):
                for top in range(10 - side + 1):
                    for left in range(12 - side + 1):
                        window = frames[start:start + config.span:config.frame_step, top:top + side, left:left + side]
                        window = resize_frames(window, 8, size=(8, 8))
                        candidate = window.permute(3, 0, 1, 2).float() / 255 * scale + shift
                        if torch.allclose(candidate, clip, atol=1e-5):
                            found.add(side)
        assert found, "every clip is a square window of 6 to 10 pixels resized to the 8-pixel crop"
        sides |= found
    assert len(sides) > 2 and min(sides) < 8 < max(sides)


def test_paired_symmetries_put_each_clip_next_to_its_mirror_or_reversal(tmp_path):
    cache = noise_cache()
    symmetries = {"reverse_time": {"A": "B", "B": "A"}, "flip_horizontal": {"A": "A", "B": "B"}}
    config = tiny_config(tmp_path, tmp_path, clip_len=4, frame_step=3, short_side=10, crop=10, brightness=0.0,
                         contrast=0.0, symmetries=symmetries, paired_symmetries=True)
    sampler = ClipSampler(cache, config, ["A", "B"])
    generator = torch.Generator().manual_seed(4)
    for _ in range(6):
        clips, labels = sampler.batch(torch.tensor([0, 1]), generator)
        assert clips.shape[0] == 4
        for first, second in ((0, 1), (2, 3)):
            candidates = [clips[first], clips[first].flip(1), clips[first].flip(3), clips[first].flip(1).flip(3)]
            matches = [i for i, candidate in enumerate(candidates[1:], 1) if torch.equal(candidate, clips[second])]
            assert matches, "the partner is the same crop, reversed and/or mirrored"
            time_reversed = matches[0] in (1, 3)
            assert (labels[first] != labels[second]) == time_reversed
    with pytest.raises(TrainingError, match="even batch_size"):
        tiny_config(tmp_path, tmp_path, paired_symmetries=True, batch_size=5)


def motion_class(cx: np.ndarray, cy: np.ndarray, angle: np.ndarray, size: np.ndarray) -> str:
    """The synthetic class a trajectory shows, read off its motion (image y points down, angles counter-clockwise)."""
    dx, dy, turn, growth = cx[-1] - cx[0], cy[-1] - cy[0], angle[-1] - angle[0], np.log(size[-1] / size[0])
    if 0 < int(np.argmax(size)) < len(size) - 1:
        return "ApproachAndRetreat"
    if abs(dx) > 1:
        return "MoveRight" if dx > 0 else "MoveLeft"
    if abs(dy) > 1:
        return "MoveDown" if dy > 0 else "MoveUp"
    if abs(turn) > 1:
        return "RotateCounterClockwise" if turn > 0 else "RotateClockwise"
    if abs(growth) > 0.01:
        return "Grow" if growth > 0 else "Shrink"
    return "StandStill"


def test_synthetic_symmetry_tables_match_the_generators_motions():
    width, height = 320, 240
    transforms = {
        "reverse_time": lambda cx, cy, a, s: (cx[::-1], cy[::-1], a[::-1], s[::-1]),
        "flip_horizontal": lambda cx, cy, a, s: (width - cx, cy, -a, s),
        "flip_vertical": lambda cx, cy, a, s: (cx, height - cy, -a, s),
    }
    assert set(SYNTH_SYMMETRIES) == set(transforms)
    rng = np.random.default_rng(3)
    for class_name in SYNTH_CLASSES:
        for _ in range(3):
            path = trajectory(sample_spec(class_name, rng, width, height, 48))
            pose = (path.cx, path.cy, path.angle, path.size)
            assert motion_class(*pose) == class_name
            for name, transform in transforms.items():
                assert motion_class(*transform(*pose)) == SYNTH_SYMMETRIES[name][class_name], (class_name, name)
    clip = torch.arange(2 * 3 * 4 * 1).view(2, 3, 4, 1)
    assert torch.equal(apply_transform("reverse_time", clip), clip[[1, 0]])
    assert torch.equal(apply_transform("flip_vertical", clip), clip[:, [2, 1, 0]])
    assert torch.equal(apply_transform("flip_horizontal", clip), clip[:, :, [3, 2, 1, 0]])


def test_motion_energy_init_makes_direction_selective_first_filters():
    conv = torch.nn.Conv3d(3, 20, kernel_size=(7, 7, 7), stride=(1, 2, 2), padding=3, bias=False)
    kept = conv.weight[16:].clone()
    norm = conv.weight[:16].detach().flatten(1).norm(dim=1).mean()
    motion_energy_init(conv)
    assert torch.equal(conv.weight[16:], kept), "channels past the 8 direction pairs keep their weights"
    assert float(conv.weight[:16].detach().flatten(1).norm(dim=1).mean()) == pytest.approx(float(norm), rel=1e-4)
    t, y, x = torch.meshgrid(torch.arange(16.0), torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for direction in range(8):
        angle = 2 * np.pi * direction / 8
        grating = torch.cos(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle) - t) / 6)
        with torch.no_grad():
            response = conv(grating.expand(1, 3, -1, -1, -1))[0, :16, 4:-4, 4:-4, 4:-4]
        energy = response.pow(2).mean(dim=(1, 2, 3)).view(8, 2).sum(dim=1)
        assert int(energy.argmax()) == direction and energy[direction] > 0.6 * energy.sum()
        opposite = (direction + 4) % 8
        assert energy[opposite] < 0.01 * energy[direction], "a pattern moving the other way must not excite it"


def test_brightness_contrast_jitter_varies_per_clip_and_stays_in_range(tmp_path):
    cache = noise_cache(num_videos=1, height=10, width=10)
    plain = tiny_config(tmp_path, tmp_path, clip_len=4, frame_step=3, short_side=10, crop=10, brightness=0.0,
                        contrast=0.0, symmetries={})
    jittered = plain.model_copy(update={"brightness": 0.3, "contrast": 0.5})
    a, _ = ClipSampler(cache, plain, ["A", "B"]).batch(torch.zeros(8, dtype=torch.int64),
                                                       torch.Generator().manual_seed(2))
    b, _ = ClipSampler(cache, jittered, ["A", "B"]).batch(torch.zeros(8, dtype=torch.int64),
                                                          torch.Generator().manual_seed(2))
    mean, std = torch.tensor(plain.mean).view(1, 3, 1, 1, 1), torch.tensor(plain.std).view(1, 3, 1, 1, 1)
    units = b * std + mean
    assert units.min() >= -1e-5 and units.max() <= 1 + 1e-5
    level_shift = (b - a).mean(dim=(1, 2, 3, 4))
    assert level_shift.std() > 0.05, "each clip should get its own brightness/contrast"


def test_learning_rate_warms_up_then_decays_by_cosine(tmp_path):
    config = tiny_config(tmp_path, tmp_path, lr=0.1, min_lr_ratio=0.01)
    rates = [learning_rate(step, 100, 10, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.01) and rates[9] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(rates[:9], rates[1:10], strict=True))
    assert all(a >= b for a, b in zip(rates[10:-1], rates[11:], strict=True))
    assert rates[10] == pytest.approx(0.1) and rates[55] == pytest.approx(0.0505, rel=1e-2)
    assert learning_rate(100, 100, 10, config) == pytest.approx(0.001)


def read_safetensors_header(path: Path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length])


@pytest.fixture(scope="module")
def finished_run(colour_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    config = tiny_config(colour_data, out, keep_checkpoints=5, eval_every=2)
    return config, train(config, progress=False)


def test_train_writes_model_metrics_curve_and_learns_the_easy_case(finished_run):
    config, report = finished_run
    out = config.out
    for name in ("model.safetensors", "model.json", "metrics.json", "training_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == list(COLOURS) and metrics["seed"] == config.seed
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert [row["test_clip_accuracy"] is None for row in metrics["history"]] == [True, False, False], "eval_every=2"
    assert metrics["test"]["num_videos"] == 6 and metrics["test"]["num_clips"] == 6 * 3
    assert np.asarray(metrics["test"]["confusion"]).sum() == 18
    assert set(metrics["seconds"]) == {"decode", "train", "eval", "total"} and metrics["seconds"]["total"] > 0
    assert sorted(Path(item["path"]).name for item in metrics["skipped_videos"]) == [
        "v_Blue_g12_c01.avi", "v_Red_g12_c01.avi"]
    assert len(report.skipped) == 2 and metrics["train_videos"] == 12
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert report.clip_accuracy == metrics["test_clip_accuracy"] >= 0.9, "3 colour classes (chance 1/3)"
    assert report.video_accuracy >= 0.9

    model, manifest = load_model(out)
    assert manifest.architecture == "r3d-10" and manifest.class_names == tuple(COLOURS)
    assert manifest.preprocessing == type(manifest.preprocessing)(**config.preprocessing())
    assert manifest.extra["training"]["config"] == config.to_json()
    assert manifest.extra["training"]["test_clip_accuracy"] == report.clip_accuracy
    # The saved model, fed through the inference path, reproduces the reported clip accuracy.
    correct = total = 0
    for sample in UCF101(config.data, subset="test"):
        with open_video(sample.path) as reader:
            raw = reader.get_frames(np.arange(reader.num_frames))
        plan = ClipSplitter(config.clip_len, config.eval_stride, config.frame_step).plan(len(raw))
        batch = preprocess(raw[np.stack(plan)], **manifest.preprocessing.model_dump(exclude={"clip_len",
                                                                                              "frame_step"}))
        with torch.no_grad():
            correct += int((model(batch).argmax(1) == sample.label).sum())
        total += len(plan)
    assert correct / total == pytest.approx(report.clip_accuracy)


def test_checkpoints_hold_no_pickle(finished_run):
    config, _ = finished_run
    files = sorted(p for p in config.out.rglob("*") if p.is_file())
    for path in files:
        head = path.read_bytes()[:4]
        assert head[:1] != b"\x80" and head != b"PK\x03\x04", f"{path} looks like a pickle / torch.save zip"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            assert read_safetensors_header(path)
        else:
            assert path.suffix == ".png", path
    checkpoints = sorted((config.out / "checkpoints").glob("epoch-*.json"))
    assert [p.name for p in checkpoints] == ["epoch-0001.json", "epoch-0002.json", "epoch-0003.json"]
    checkpoint = load_checkpoint(checkpoints[-1])
    assert (checkpoint.epoch, checkpoint.config) == (3, config.to_json())
    kinds = {key.split(".")[0] for key in checkpoint.tensors}
    assert kinds == {"model", "optimizer", "rng"}
    final = load_file(config.out / "model.safetensors")
    assert all(torch.equal(final[key], checkpoint.tensors[f"model.{key}"]) for key in final)


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(finished_run, tmp_path, monkeypatch):
    config, report = finished_run
    interrupted = config.model_copy(update={"out": tmp_path / "interrupted", "keep_checkpoints": 1})
    real_run_epoch = trainer_module._Loop.run_epoch

    def run_epoch_then_stop(loop, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C during the second epoch
        return real_run_epoch(loop, epoch)

    monkeypatch.setattr(trainer_module._Loop, "run_epoch", run_epoch_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(interrupted.out).name == "epoch-0001.json"
    assert not (interrupted.out / "model.safetensors").exists()
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(interrupted, progress=False)
    with pytest.raises(TrainingError, match=r"different config \(lr differ\)"):
        train(interrupted.model_copy(update={"lr": 1e-2}), progress=False, resume=True)

    resumed = train(interrupted, progress=False, resume=True)
    assert resumed.resumed_from_epoch == 1
    expected, actual = load_file(config.out / "model.safetensors"), load_file(interrupted.out / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert resumed.clip_accuracy == report.clip_accuracy
    assert [row["train_loss"] for row in resumed.metrics["history"]] == [
        row["train_loss"] for row in report.metrics["history"]]


def test_tampered_checkpoint_is_refused(finished_run, tmp_path):
    config, _ = finished_run
    copy = tmp_path / "copy" / "checkpoints"
    copy.mkdir(parents=True)
    for path in (config.out / "checkpoints").glob("epoch-0003.*"):
        (copy / path.name).write_bytes(path.read_bytes())
    tensors = copy / "epoch-0003.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(TrainingError, match="does not match the sha256"):
        train(config.model_copy(update={"out": tmp_path / "copy"}), progress=False, resume=True)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config.model_copy(update={"out": tmp_path / "empty"}), progress=False, resume=True)


def parse_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clipwatch")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


def run_cli(*argv: str) -> int:
    args = parse_cli(*argv)
    return args.func(args)


def test_cli_options_override_the_preset(tmp_path):
    default = TrainConfig.preset("default", data=tmp_path, out=tmp_path / "o")
    config = build_config(parse_cli(str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "default", "--init", "scratch",
                                    "--model", "r3d-10", "--width", "20",
                                    "--lr", "0.01", "--optimizer", "sgd", "--seed", "5", "--split", "2", "--fit",
                                    "stretch", "--clips-per-video", "3", "--min-scale", "0.7"))
    assert config.model_options == {**default.model_options, "width": 20}
    assert (config.model, config.lr, config.optimizer, config.seed, config.split) == ("r3d-10", 0.01, "sgd", 5, 2)
    assert (config.fit, config.clips_per_video, config.min_scale) == ("stretch", 3, 0.7)
    assert config.differences(default) == ["split", "model", "model_options", "fit", "clips_per_video", "optimizer",
                                           "lr", "min_scale", "seed"]
    c3d = build_config(parse_cli(str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "default", "--model", "c3d"))
    assert c3d.model_options == {}, "r3d options do not carry over to another architecture"


def test_an_init_fixes_the_input_size_only_where_its_layers_need_it(colour_data, tmp_path):
    from pipeline.models import save_model

    prep = {"clip_len": 8, "frame_step": 1, "short_side": 40, "crop": 32, "fit": "stretch", "mean": (0.5,) * 3,
            "std": (0.25,) * 3}
    resnet, c3d = tmp_path / "resnet", tmp_path / "c3d"
    save_model(build_model("r3d-10", 2, width=4), resnet, architecture="r3d-10", options={"width": 4}, num_classes=2,
               class_names=["A", "B"], preprocessing=prep)
    assert '"fit": "stretch"' in (resnet / "model.json").read_text()
    options = {"width": 8, "fc_dim": 16, "adaptive_pool": False}
    save_model(build_model("c3d", 2, **options), c3d, architecture="c3d", options=options, num_classes=2,
               class_names=["A", "B"], preprocessing={**prep, "short_side": 128, "crop": 112, "fit": "crop"})
    assert '"fit"' not in (c3d / "model.json").read_text(), "a cropping model's manifest stays readable by old releases"

    free = build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "o"), "--init", str(resnet)))
    recipe = PRESETS["finetune"]
    assert (free.clip_len, free.short_side, free.crop, free.fit, free.frame_step) == (
        8, recipe["short_side"], recipe["crop"], "crop", recipe["frame_step"]), \
        "a 3D ResNet's input size, fit and frame step are the recipe's, its clip length the init's"
    fixed = build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "o"), "--init", str(c3d)))
    assert (fixed.model, fixed.short_side, fixed.crop, fixed.frame_step) == ("c3d", 128, 112, 1), \
        "a C3D's input size and frame step are its own"
    same = build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "o"), "--init", str(c3d),
                                  "--input-size", "112"))
    assert (same.short_side, same.crop) == (128, 112)
    with pytest.raises(TrainingError, match="--input-size 96: .*c3d takes 112x112 inputs only"):
        build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "o"), "--init", str(c3d), "--input-size",
                               "96"))


def test_cli_trains_resumes_and_reports_bad_input(colour_data, tmp_path, capsys):
    out = tmp_path / "cli"
    common = ["--preset", "smoke", "--width", "4", "--epochs", "1", "--batch-size", "4", "--threads", "1",
              "--no-progress"]
    assert run_cli(str(colour_data), "--out", str(out), *common, "--seed", "7") == 0
    printed = capsys.readouterr().out
    assert "trained r3d-10 for 1 epochs" in printed and "skipped 2 unreadable videos" in printed
    _, manifest = load_model(out)
    training = manifest.extra["training"]
    assert (training["seed"], training["config"]["model_options"]["width"]) == (7, 4)
    assert training["config"]["batch_size"] == 4 and manifest.preprocessing.crop == 48

    assert run_cli(str(colour_data), "--out", str(out), "--resume", "--no-progress") == 0
    assert "resumed after epoch 1" in capsys.readouterr().out
    with pytest.raises(TrainingError) as info:
        run_cli(str(colour_data), "--out", str(out), *common)
    assert "already holds a training run" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DatasetError) as info:
        run_cli(str(tmp_path / "missing"), "--out", str(tmp_path / "x"), *common)
    assert "missing" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown model 'r3d-7'"):
        run_cli(str(colour_data), "--out", str(tmp_path / "y"), *common, "--model", "r3d-7")
    assert not (tmp_path / "y").exists(), "a bad model name must fail before anything is written"


def test_fine_tuning_the_shipped_model_is_what_train_does_by_default(colour_data, tmp_path, capsys):
    config = build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "plan")))
    _, shipped = load_model("base")
    assert (config.init, config.model, config.model_options) == ("base", shipped.architecture, shipped.options)
    assert (config.clip_len, config.mean) == (shipped.preprocessing.clip_len, shipped.preprocessing.mean)
    assert (config.crop, config.short_side, config.frame_step) == tuple(
        PRESETS["finetune"][name] for name in ("crop", "short_side", "frame_step")), \
        "a 3D ResNet takes any input size and duration: the recipe's stand"
    assert config.frame_step != shipped.preprocessing.frame_step, "else the line above shows nothing"
    assert (config.symmetries, config.motion_init) == ({}, False)
    sized = build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "plan"), "--input-size", "96"))
    assert (sized.short_side, sized.crop) == (96, 96)
    stepped = build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "plan"), "--frame-step", "2"))
    assert (stepped.frame_step, stepped.span, stepped.clip_len) == (2, 31, shipped.preprocessing.clip_len), \
        "--frame-step overrides the recipe's step; the clip keeps its frames and spans less time"
    assert (config.val_fraction, config.patience) == (0, None), "every video trains, the schedule runs to its end"

    with pytest.raises(TrainingError, match=r"no usable train videos .*clips span 46 frames \(16, every 3rd\): "
                                            r"a smaller --frame-step takes shorter videos"):
        run_cli(str(colour_data), "--out", str(tmp_path / "short"), "--no-progress")  # its videos have 32 frames

    long_data = write_colour_data(tmp_path / "long", num_frames=48)
    out = tmp_path / "tuned"
    assert run_cli(str(long_data), "--out", str(out), "--epochs", "3", "--batch-size", "4", "--threads", "1",
                   "--val-fraction", "0.3", "--patience", "1", "--no-progress") == 0
    assert "trained r3d-18" in capsys.readouterr().out
    model, manifest = load_model(out)
    assert manifest.class_names == tuple(COLOURS) and manifest.options == shipped.options
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation_videos"] > 0 and metrics["best_epoch"] in range(1, 4)
    validated = [row for row in metrics["history"] if row.get("val_clip_accuracy") is not None]
    assert validated and all(row.get("test_clip_accuracy") is None for row in metrics["history"])
    assert metrics["epochs_run"] <= 3 and metrics["test_clip_accuracy"] >= 0


def test_transfer_keeps_every_weight_but_the_head(tmp_path):
    _, shipped = load_model("default")
    init = read_init("default")
    model = build_model(shipped.architecture, 3, **shipped.options)
    fresh_head = model.fc.weight.clone()
    summary = transfer_weights(model, init)
    assert "head 'fc' re-initialised" in summary
    for name, tensor in model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, init.state[name]), name
    assert torch.equal(model.fc.weight, fresh_head) and model.fc.out_features == 3
    narrow = build_model("r3d-18", 3, width=8)
    with pytest.raises(WeightsError, match="shape"):
        transfer_weights(narrow, init)


def test_a_hara_checkpoint_initialises_training(colour_data, tmp_path):
    """A 400-class r3d-18 saved the way Hara et al.'s code saves it (DataParallel names under 'state_dict', with
    the epoch, architecture and optimizer beside them) starts a 3-class run; the head is new, the rest is theirs."""
    hara = build_model("r3d-18", 400)
    checkpoint = tmp_path / "r3d18_K_200ep.pth"
    torch.save({"epoch": 200, "arch": "resnet-18", "state_dict": {f"module.{k}": v for k, v in
                                                                 hara.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]}}, checkpoint)
    out = tmp_path / "from-hara"
    assert run_cli(str(colour_data), "--out", str(out), "--preset", "smoke", "--init", str(checkpoint), "--model",
                   "r3d-18", "--width", "64", "--epochs", "1", "--batch-size", "4", "--threads", "1",
                   "--no-progress") == 0
    model, manifest = load_model(out)
    assert manifest.num_classes == 3 and manifest.extra["training"]["config"]["init"] == str(checkpoint)
    for name in ("conv1.weight", "layer2.0.conv1.weight", "layer4.1.conv2.weight"):
        start, end = hara.state_dict()[name].flatten(), model.state_dict()[name].flatten()
        assert torch.nn.functional.cosine_similarity(start, end, dim=0) > 0.9, name
    with pytest.raises(WeightsError, match="shape"):
        run_cli(str(colour_data), "--out", str(tmp_path / "narrow"), "--preset", "smoke", "--init", str(checkpoint),
                "--epochs", "1", "--no-progress")
    pickled = tmp_path / "code.pth"
    torch.save({"state_dict": hara.state_dict(), "callable": print}, pickled)
    with pytest.raises(WeightsError, match="weights_only"):
        run_cli(str(colour_data), "--out", str(tmp_path / "evil"), "--init", str(pickled), "--no-progress")


def test_freeze_through_keeps_the_init_up_to_that_module(colour_data, tmp_path):
    """Every weight and BatchNorm statistic up to layer2 stays the init's; later layers and the new head train."""
    init = build_model("r3d-10", 5, width=8)
    for module in init.modules():  # BatchNorm statistics unlike those of fresh layers, so a change would show
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
    checkpoint = tmp_path / "init.pth"
    torch.save({"state_dict": init.state_dict()}, checkpoint)
    out = tmp_path / "frozen"
    assert run_cli(str(colour_data), "--out", str(out), "--preset", "smoke", "--init", str(checkpoint),
                   "--freeze-through", "layer2", "--epochs", "1", "--batch-size", "4", "--threads", "1",
                   "--no-progress") == 0
    model, manifest = load_model(out)
    assert manifest.extra["training"]["config"]["freeze_through"] == "layer2"
    start, end = init.state_dict(), model.state_dict()
    frozen = [n for n in end if n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")]
    assert any("running_mean" in n for n in frozen) and any("layer2" in n for n in frozen)
    for name in frozen:
        assert torch.equal(start[name], end[name]), name
    assert not torch.equal(start["layer3.0.conv1.weight"], end["layer3.0.conv1.weight"])
    assert not torch.equal(start["layer4.0.bn1.running_mean"], end["layer4.0.bn1.running_mean"])
    with pytest.raises(TrainingError, match="has no module 'layer9' .top-level: conv1, bn1"):
        run_cli(str(colour_data), "--out", str(tmp_path / "bad"), "--preset", "smoke", "--init", str(checkpoint),
                "--freeze-through", "layer9", "--epochs", "1", "--no-progress")
    with pytest.raises(TrainingError, match="would freeze the head 'fc'"):
        run_cli(str(colour_data), "--out", str(tmp_path / "head"), "--preset", "smoke", "--init", str(checkpoint),
                "--freeze-through", "fc", "--epochs", "1", "--no-progress")


def test_symmetry_tables_are_optional_and_read_from_yaml(colour_data, tmp_path):
    tables = tmp_path / "symmetries.yaml"
    tables.write_text("flip_horizontal: {Red: Blue, Blue: Red}\n")
    config = build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "o"), "--symmetries", str(tables)))
    assert config.symmetries == {"flip_horizontal": {"Red": "Blue", "Blue": "Red"}}
    tables.write_text("- not a mapping\n")
    with pytest.raises(TrainingError, match="symmetries must be a mapping"):
        build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "o"), "--symmetries", str(tables)))
    with pytest.raises(TrainingError, match="patience needs a validation split"):
        build_config(parse_cli(str(colour_data), "--out", str(tmp_path / "o"), "--val-fraction", "0", "--patience", "3"))


def _samples(per_class: dict[int, list[int]]) -> list[VideoSample]:
    return [VideoSample(Path(f"c{label}/g{group}_{clip}.avi"), label, f"c{label}", group, clip)
            for label, groups in per_class.items() for group in groups for clip in (1, 2)]


def test_validation_split_is_stratified_by_class_and_holds_out_whole_groups():
    samples = _samples({0: list(range(8, 26)), 1: [8, 9, 10, 11], 2: [8, 9]})
    train, val = validation_split(samples, 0.25, seed=3)
    assert len(train) + len(val) == len(samples) and not {s.path for s in train} & {s.path for s in val}
    for label in (0, 1, 2):
        assert any(s.label == label for s in train) and any(s.label == label for s in val), label
    held_groups = {(s.label, s.group) for s in val if s.label < 2}
    assert not any((s.label, s.group) in held_groups for s in train)  # no clip of a held-out group is trained on
    assert round(0.25 * 18) * 2 == sum(s.label == 0 for s in val)


def test_validation_split_says_when_it_cannot_hold_anything_out(caplog):
    with caplog.at_level("WARNING"):
        train, val = validation_split(_samples({0: [8], 1: [9]})[::2], 0.2, seed=0)
    assert val == [] and len(train) == 2 and "no video could be held out" in caplog.text


def test_optimizer_groups_keep_old_checkpoints_resumable_and_a_frozen_backbone_frozen(tmp_path):
    model = build_model("r3d-18", 3, width=8)
    assert len(make_optimizer(model, tiny_config(tmp_path, tmp_path, backbone_lr_ratio=1.0)).param_groups) == 2
    assert len(make_optimizer(model, tiny_config(tmp_path, tmp_path, backbone_lr_ratio=0.5)).param_groups) == 4
    frozen = build_model("r3d-18", 3, width=8)
    optimizer = make_optimizer(frozen, tiny_config(tmp_path, tmp_path, backbone_lr_ratio=0.0))
    assert len(optimizer.param_groups) == 2 and all(n.startswith("fc.") for n, p in frozen.named_parameters()
                                                     if p.requires_grad)
    before = {n: t.clone() for n, t in frozen.state_dict().items() if "running" in n}
    frozen.train()
    frozen(torch.randn(2, 3, 8, 32, 32) * 3 + 1)
    assert all(torch.equal(before[n], t) for n, t in frozen.state_dict().items() if n in before)


def test_outliers_are_shuffled_or_spliced_known_clips_and_the_input_is_untouched():
    from pipeline.training.openset import make_outliers

    clips = torch.arange(4 * 3 * 8 * 2 * 2, dtype=torch.float32).reshape(4, 3, 8, 2, 2)
    labels = torch.tensor([0, 0, 1, 2])
    before = clips.clone()
    outliers = make_outliers(clips, labels, 6, torch.Generator().manual_seed(0))
    assert torch.equal(clips, before) and outliers.shape == (6, 3, 8, 2, 2)
    frames = {tuple(clips[i, :, t].flatten().tolist()): (i, t) for i in range(4) for t in range(8)}
    for k, outlier in enumerate(outliers):
        sources = [frames[tuple(outlier[:, t].flatten().tolist())] for t in range(8)]
        if k % 2 == 0:  # shuffled: one clip's frames, each once, not in order
            assert len({i for i, _ in sources}) == 1 and sorted(t for _, t in sources) == list(range(8))
        else:  # spliced: the first half of one clip, the second of a clip of another class
            (first, _), (second, _) = sources[0], sources[-1]
            assert [t for _, t in sources] == list(range(8)) and labels[first] != labels[second]


def test_objectosphere_loss_values():
    from pipeline.training.openset import objectosphere_loss

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    features = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    known = torch.tensor([True, False])
    labels = torch.tensor([0, 0])
    loss = objectosphere_loss(logits, features, labels, known, xi=2.0, weight=0.5)
    ce = -torch.log_softmax(logits[0], 0)[0]
    expected = (ce + 0.5 * (1 - 1 / 2) ** 2 + (math.log(3.0) + 0.5 * (3 / 2) ** 2)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert objectosphere_loss(logits, features * 10, labels, ~known | known, xi=2.0, weight=0.5).item() == \
        pytest.approx(F.cross_entropy(logits, labels, reduction="none").mean().item(), rel=1e-6)


def test_open_set_training_runs_and_records_its_feature_norm_target(colour_data, tmp_path):
    config = tiny_config(colour_data, tmp_path / "run", epochs=2, outliers="auto", loss="objectosphere")
    report = train(config, progress=False)
    history = report.metrics["history"]
    assert all(row["objectosphere_xi"] > 0 for row in history) and len({row["objectosphere_xi"] for row in history}) == 1
    with pytest.raises(ValueError, match="objectosphere needs outliers"):
        tiny_config(colour_data, tmp_path / "x", loss="objectosphere")


def test_factor_loss_is_the_cross_entropy_of_summed_class_probabilities():
    from pipeline.data.pretrain import PRETRAIN_CLASSES, PRETRAIN_FACTORS
    from pipeline.training.factors import FactorLoss

    classes = ["AL", "AR", "BL", "BR"]  # two factors: letter and side
    factors = {"letter": {c: c[0] for c in classes}, "side": {c: c[1] for c in classes}}
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 0.5, 0.0, 3.0]])
    labels = torch.tensor([1, 3])
    p = torch.softmax(logits, dim=1)
    expected = -(torch.log(p[0, 0] + p[0, 1]) + torch.log(p[1, 2] + p[1, 3])) / 2 \
        - (torch.log(p[0, 1] + p[0, 3]) + torch.log(p[1, 1] + p[1, 3])) / 2
    assert FactorLoss(factors, classes)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert not FactorLoss({}, classes)
    with pytest.raises(TrainingError, match="factor 'letter' gives no value for class 'CX'"):
        FactorLoss(factors, [*classes, "CX"])
    assert {len(set(t.values())) for t in PRETRAIN_FACTORS.values()} == {9, 3}
    assert all(set(t) == set(PRETRAIN_CLASSES) for t in PRETRAIN_FACTORS.values())


def test_best_epoch_prefers_the_later_of_tied_epochs(tmp_path):
    """A small validation split ties often; the later epoch (lower learning rate) is kept, patience counts from it,
    and a resumed run recovers the same choice from the history."""
    model = torch.nn.Linear(2, 2)
    best = Best(tmp_path, model)
    history = []
    for epoch, score in [(1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6)]:
        with torch.no_grad():
            model.weight.fill_(epoch)
        best.offer(epoch, score)
        history.append({"epoch": epoch, "val_clip_accuracy": score})
    assert (best.epoch, best.score) == (3, 0.7)
    assert not best.exhausted(history, patience=2) and best.exhausted(history, patience=1)
    with torch.no_grad():
        model.weight.fill_(0)
    best.restore()
    assert torch.all(model.weight == 3), "the tied later epoch's weights come back"
    resumed = Best(tmp_path, model)
    assert not resumed.exhausted(history, patience=2) and resumed.epoch == 3
