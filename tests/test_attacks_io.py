"""Attack plumbing without a trained model: storage round trips, frame files, normalisation, grid projection, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.attacks import (
    AdversarialFrame,
    AttackError,
    FramingAttack,
    Normalize,
    fgsm,
    from_uint8,
    load_attacked_clips,
    pgd,
    save_attacked_clips,
    scaled_frame_width,
    to_uint8,
)
from pipeline.attacks.common import predict, project_to_grid
from pipeline.attacks.errors import AttackFileError
from pipeline.attacks.frame import apply_frame, border_mask
from pipeline.models import Preprocessing, build_model
from pipeline.video.preprocess import KINETICS_MEAN, KINETICS_STD, preprocess

torch.set_num_threads(1)


def random_frames(seed: int = 0, shape=(3, 4, 16, 20, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_uint8_conversion_round_trips_exactly():
    frames = random_frames()
    clips = from_uint8(frames)
    assert clips.shape == (3, 3, 4, 16, 20) and clips.dtype == torch.float32
    assert 0 <= clips.min() and clips.max() <= 1
    assert np.array_equal(to_uint8(clips), frames)
    nudged = (clips + 0.4 / 255).clamp(0, 1)
    assert np.array_equal(to_uint8(nudged), frames), "to_uint8 rounds to the nearest level"


def test_attacked_clips_save_and_load_losslessly(tmp_path):
    frames = random_frames(1)
    clips = from_uint8(frames)
    sources = [f"cam1:{seq}" for seq in range(3)]
    path = save_attacked_clips(tmp_path / "adv" / "pgd_clips", clips, attack="pgd",
                               params={"eps": 8 / 255, "steps": 10}, labels=torch.tensor([2, 0, 1]),
                               source=sources, extra={"targets": [1, 1, 1]})

    assert path == tmp_path / "adv" / "pgd_clips.npz" and path.with_suffix(".json").exists()
    metadata = json.loads(path.with_suffix(".json").read_text())
    assert metadata["shape"] == [3, 4, 16, 20, 3] and metadata["layout"] == "BTHWC" and metadata["labels"] == [2, 0, 1]
    stored = load_attacked_clips(path.with_suffix(".json"))
    assert stored.frames.dtype == np.uint8 and np.array_equal(stored.frames, frames)
    assert torch.equal(stored.clips(), clips)
    assert (stored.attack, stored.params, stored.labels) == ("pgd", {"eps": 8 / 255, "steps": 10}, [2, 0, 1])
    assert stored.source == sources and stored.extra == {"targets": [1, 1, 1]}


def test_tampered_or_incomplete_attacked_clips_are_rejected(tmp_path):
    path = save_attacked_clips(tmp_path / "clips", random_frames(2), attack="fgsm", params={}, labels=[0, 1, 2])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AttackFileError, match="clips.npz"):
        load_attacked_clips(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(AttackFileError, match="clips.json: cannot read"):
        load_attacked_clips(path)
    with pytest.raises(AttackFileError, match="2 labels for 3 clips"):
        save_attacked_clips(tmp_path / "more", random_frames(3), attack="fgsm", params={}, labels=[0, 1])
    with pytest.raises(AttackFileError, match="plain JSON"):
        save_attacked_clips(tmp_path / "more", random_frames(3), attack="fgsm", params={"x": object()},
                            labels=[0, 1, 2])


def test_adversarial_frame_save_load_round_trip(tmp_path):
    pixels = torch.rand(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    frame = AdversarialFrame(pixels, width=2, info={"mode": "universal", "seed": 0})
    assert torch.count_nonzero(frame.pixels[..., 2:-2, 2:-2]) == 0, "interior entries are canonical zeros"

    weights = frame.save(tmp_path / "frame")
    assert weights.suffix == ".safetensors" and weights.with_suffix(".json").exists()
    loaded = AdversarialFrame.load(weights.with_suffix(".json"))
    assert torch.equal(loaded.pixels, frame.pixels) and loaded.width == 2 and loaded.info == frame.info
    clips = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.apply(clips), frame.apply(clips))

    manifest = json.loads(weights.with_suffix(".json").read_text())
    manifest["sha256"] = "0" * 64
    weights.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(AttackFileError, match="frame.safetensors: sha256"):
        AdversarialFrame.load(weights)


def test_apply_frame_accepts_shared_and_per_clip_frames():
    clips = torch.rand(2, 3, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    shared = apply_frame(clips, torch.ones(3, 1, 12, 12), width=1)
    per_clip = apply_frame(clips, torch.zeros(2, 3, 4, 12, 12), width=1)
    mask = border_mask(12, 12, 1)
    assert torch.all(shared[..., mask] == 1) and torch.all(per_clip[..., mask] == 0)
    assert torch.equal(shared[..., ~mask], clips[..., ~mask]) and torch.equal(per_clip[..., ~mask], clips[..., ~mask])
    with pytest.raises(AttackError, match="does not fit"):
        apply_frame(clips, torch.ones(3, 3, 12, 12), width=1)
    with pytest.raises(AttackError, match="leave an interior"):
        apply_frame(clips, torch.ones(3, 1, 12, 12), width=6)


def test_scaled_frame_width_keeps_the_covered_fraction():
    assert [scaled_frame_width(size) for size in (112, 56, 32, 256, 8)] == [4, 2, 1, 9, 1]
    assert scaled_frame_width(224, width=8) == 16


def test_normalize_matches_the_video_preprocessing():
    frames = random_frames(4, shape=(2, 4, 16, 16, 3))
    prep = Preprocessing(clip_len=4, frame_step=1, short_side=16, crop=16, mean=KINETICS_MEAN, std=KINETICS_STD)
    normalized = Normalize.from_preprocessing(prep)(from_uint8(frames))
    torch.testing.assert_close(normalized, preprocess(frames, short_side=16, crop=16), rtol=1e-5, atol=1e-5)
    with pytest.raises(AttackError, match="std must be positive"):
        Normalize((0.5, 0.5, 0.5), (0.2, 0.0, 0.2))


@pytest.mark.parametrize("clean_on_grid", [True, False])
def test_grid_projection_stays_in_the_eps_ball(clean_on_grid):
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (20000,), generator=generator).float() / 255
    if not clean_on_grid:
        clean = (clean + torch.rand(clean.shape, generator=generator) / 255).clamp(0, 1)
    eps = 3 / 255
    adversarial = (clean + (torch.rand(clean.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    snapped = project_to_grid(adversarial, clean, eps)
    assert torch.equal(snapped, torch.round(snapped * 255) / 255)
    assert (snapped - clean).abs().max() <= eps + 1e-6 and snapped.min() >= 0 and snapped.max() <= 1
    assert (snapped - adversarial).abs().max() <= 1 / 255 + 1e-6


def test_bad_inputs_get_one_line_errors():
    model = build_model("r3d-10", 2, width=2)
    clips = torch.rand(2, 3, 4, 16, 16)
    cases = [
        (lambda: fgsm(model, clips * 2, [0, 1]), "pixels must lie in \\[0, 1\\]"),
        (lambda: fgsm(model, clips[0], [0, 1]), "non-empty \\(B, C, T, H, W\\)"),
        (lambda: fgsm(model, (clips * 255).to(torch.uint8), [0, 1]), "expected float pixels"),
        (lambda: pgd(model, clips, [0, 1, 1]), "labels must have shape \\(2,\\)"),
        (lambda: pgd(model, clips, [0, 1], eps=0.5 / 255), "below one 8-bit level"),
        (lambda: pgd(model, clips, [0, 1], steps=0), "steps must be a positive integer"),
        (lambda: FramingAttack(width=0), "width must be a positive integer"),
        (lambda: FramingAttack(lr=-1.0), "lr must be positive"),
        (lambda: FramingAttack(width=8).attack_batch(model, clips, [0, 1]), "leave an interior in 16x16"),
        (lambda: FramingAttack().fit_universal(model, clips, None), "labels are required"),
        (lambda: FramingAttack().fit_universal(model, iter([(clips, [0, 1])]), None), "re-iterable"),
    ]
    for call, message in cases:
        with pytest.raises(AttackError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_predict_batches_and_restores_mode():
    torch.manual_seed(0)
    model = build_model("r3d-10", 3, width=2).train()
    clips = torch.rand(5, 3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = predict(model, clips, batch_size=2)
    assert model.training
    with torch.no_grad():
        expected = model.eval()(clips).argmax(1)
    assert torch.equal(labels, expected)
