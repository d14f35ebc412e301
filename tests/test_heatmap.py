"""The OOD heatmap decoder (seed 002): corruptions, targets, border mass, and a decoder that learns to stay at zero
on in-distribution clips and to light up where a clip was changed."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.detect.zoo import DETECTORS, ZooError
from pipeline.detect.zoo.heatmap import (
    HeatmapDetector,
    border_mass,
    corrupt,
    default_heatmap_layers,
    difference_target,
    time_moments,
)


class SpatialNet(nn.Module):
    """Two conv stages that keep a spatial map, a pooled linear head: the shape of the 3D ResNets, in small."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv3d(8, 8, kernel_size=3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv3d(8, 8, kernel_size=3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(torch.relu(self.conv1(clips)))).mean(dim=(2, 3, 4)))


def smooth_clips(n: int, seed: int) -> torch.Tensor:
    """Clips of slowly varying colour gradients: what "in-distribution" means for the toy decoder."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 24)
    a, b, c = (torch.rand(n, 3, 1, 1, 1, generator=generator) for _ in range(3))
    return (0.2 + 0.3 * a + 0.3 * b * ramp[None, None, None, :, None] + 0.2 * c * ramp[None, None, None, None, :]) \
        .expand(n, 3, 4, 24, 24).clone()


def normalize(clips: torch.Tensor) -> torch.Tensor:
    return (clips - 0.5) / 0.25


def test_corruptions_change_one_rectangle_and_leave_the_input_alone():
    clips = smooth_clips(40, 0)
    before = clips.clone()
    changed = corrupt(clips, torch.Generator().manual_seed(1))
    assert torch.equal(clips, before)
    assert changed.shape == clips.shape and changed.min() >= 0 and changed.max() <= 1
    moved = (changed != clips).any(dim=(1, 2))  # (N, H, W): pixels changed in some channel or frame
    assert moved.flatten(1).any(dim=1).float().mean() > 0.9  # a same-colour fill may, rarely, change nothing
    for mask in moved:
        if mask.any():
            rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
            box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.float().mean() > 0.5  # the changes fill one box, not scattered pixels
    target = difference_target(clips, changed)
    assert target.shape == (40, 24, 24) and target.min() >= 0
    peaks = target.flatten(1).amax(dim=1)
    assert torch.allclose(peaks[moved.flatten(1).any(dim=1)], torch.ones(()))
    assert difference_target(clips, clips).abs().max() == 0


def test_time_moments_are_the_mean_and_unbiased_deviation_over_time():
    clips = torch.randn(3, 3, 16, 9, 7, generator=torch.Generator().manual_seed(0)) * 2 + 1
    before = clips.clone()
    mean, std = time_moments(clips)
    torch.testing.assert_close(mean, clips.mean(dim=2))
    torch.testing.assert_close(std, clips.std(dim=2))
    assert torch.equal(clips, before)  # the input is not modified
    assert torch.equal(time_moments(clips[:, :, :1])[1], torch.zeros(3, 3, 9, 7))  # one frame: no spread, not NaN
    leaf = clips.clone().requires_grad_(True)  # differentiable, for an attacker who descends through the decoder
    mean, std = time_moments(leaf)
    (mean.sum() + std.sum()).backward()
    reference = clips.clone().requires_grad_(True)
    (reference.mean(dim=2).sum() + reference.std(dim=2).sum()).backward()
    torch.testing.assert_close(leaf.grad, reference.grad)


def test_border_mass():
    maps = np.zeros((3, 10, 10), dtype=np.float32)
    maps[0, 0, :] = 1.0  # all on the top edge
    maps[1] = 1.0  # uniform: the border's share of the area
    in_border = border_mass(maps, 2)
    assert in_border[0] == 1.0
    assert in_border[1] == pytest.approx(1 - 36 / 100)
    assert np.isnan(in_border[2])


def test_default_layers_are_the_spatial_stages():
    assert default_heatmap_layers(SpatialNet(), (3, 4, 24, 24)) == ("conv1", "layer1", "layer2")


def test_decoder_stays_near_zero_on_training_clips_and_lights_up_where_a_clip_was_changed():
    model = SpatialNet().eval()
    train = smooth_clips(160, 0)
    detector = HeatmapDetector(epochs=12, batch_size=32, lr=1e-2)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    assert detector.fit_clips(model, train, normalize) is detector
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in weights.items())  # classifier fixed
    assert detector.losses_[-1] < detector.losses_[0]

    heat_train = detector.heatmaps(model, train[:64], normalize)
    inside = smooth_clips(64, 5)
    heat_inside = detector.heatmaps(model, inside, normalize)
    assert heat_train.shape == (64, 24, 24) and heat_train.dtype == np.float32
    assert heat_train.mean() < 0.05 and heat_inside.mean() < 0.05

    framed = inside.clone()  # a noisy 3-pixel frame: a corruption shape the decoder never trained on as such
    noise = torch.rand(framed.shape, generator=torch.Generator().manual_seed(9))
    border = torch.zeros(24, 24, dtype=torch.bool)
    border[:3], border[-3:], border[:, :3], border[:, -3:] = True, True, True, True
    framed[..., border] = noise[..., border]
    heat_framed = detector.heatmaps(model, framed, normalize)
    assert heat_framed.mean() > 3 * heat_inside.mean()
    assert np.nanmean(border_mass(heat_framed, 3)) > 1 - 18 * 18 / 24 ** 2  # more than the border's share of area
    scores_in, scores_out = detector.score_clips(model, inside, normalize), detector.score_clips(model, framed, normalize)
    assert scores_in.dtype == np.float64 and (scores_in.mean() > scores_out.mean())

    # The floor: the 0.99 quantile of the training clips' raw pixels; above it the change remains, below it nothing.
    raw_train = detector.heatmaps(model, train, normalize, raw=True)
    assert 0 < detector.floor_ == pytest.approx(np.quantile(raw_train.reshape(len(train), -1)[:, ::1], 0.99), rel=1e-6)
    assert (detector.heatmaps(model, train, normalize) == 0).mean() >= 0.98
    raw_framed = detector.heatmaps(model, framed, normalize, raw=True)
    np.testing.assert_allclose(heat_framed, np.clip((raw_framed - detector.floor_) / (1 - detector.floor_), 0, 1),
                               atol=1e-6)
    assert heat_framed.mean() > 0  # the frame survives the floor
    assert heat_framed.mean() / max(heat_inside.mean(), 1e-9) > raw_framed.mean() / raw_train.mean()
    assert torch.equal(detector.floored(torch.from_numpy(raw_framed)), torch.from_numpy(detector.floored(raw_framed)))
    with pytest.raises(ZooError, match=r"floor_quantile must be in \[0, 1\)"):
        HeatmapDetector(floor_quantile=1.0).fit_clips(model, train, normalize)


def test_heatmap_detector_is_in_the_zoo_and_refuses_bad_use():
    assert DETECTORS["heatmap"] is HeatmapDetector
    model = SpatialNet().eval()
    with pytest.raises(ZooError, match="not fitted"):
        HeatmapDetector().heatmaps(model, smooth_clips(2, 0), normalize)
    with pytest.raises(ZooError, match="epochs must be a positive integer"):
        HeatmapDetector(epochs=0).fit_clips(model, smooth_clips(2, 0), normalize)
    with pytest.raises(ZooError, match=r"clips must be float \(N, 3, T, H, W\)"):
        HeatmapDetector().fit_clips(model, torch.zeros(2, 3, 24, 24), normalize)


def test_saved_decoder_loads_and_gives_the_same_heatmaps(tmp_path):
    model = SpatialNet().eval()
    detector = HeatmapDetector(epochs=2, batch_size=32).fit_clips(model, smooth_clips(64, 0), normalize)
    detector.save(tmp_path / "heatmap")
    loaded = HeatmapDetector.load(tmp_path / "heatmap")
    clips = smooth_clips(8, 3)
    assert loaded.layers_ == detector.layers_ and loaded.losses_ == pytest.approx(detector.losses_)
    assert loaded.floor_ == detector.floor_ > 0
    assert np.array_equal(loaded.heatmaps(model, clips, normalize), detector.heatmaps(model, clips, normalize))
    description = json.loads((tmp_path / "heatmap" / "decoder.json").read_text())
    del description["floor"]  # a decoder saved before floors existed reports its raw maps
    (tmp_path / "heatmap" / "decoder.json").write_text(json.dumps(description))
    old = HeatmapDetector.load(tmp_path / "heatmap")
    assert old.floor_ == 0.0
    assert np.array_equal(old.heatmaps(model, clips, normalize), detector.heatmaps(model, clips, normalize, raw=True))
    for bad in (1.0, -0.1, float("nan")):
        (tmp_path / "heatmap" / "decoder.json").write_text(json.dumps({**description, "floor": bad}))
        with pytest.raises(ZooError, match=r"not a usable heatmap decoder \(floor .* is not in \[0, 1\)\)"):
            HeatmapDetector.load(tmp_path / "heatmap")
    (tmp_path / "heatmap" / "decoder.json").write_text("{}")
    with pytest.raises(ZooError, match="not a usable heatmap decoder") as info:
        HeatmapDetector.load(tmp_path / "heatmap")
    assert "\n" not in str(info.value)


def test_overlay_leaves_a_cold_frame_alone_and_tints_only_the_model_crop():
    from pipeline.models import Preprocessing
    from pipeline.stream.steps.classify import heatmap_overlay

    prep = Preprocessing(clip_len=8, frame_step=1, short_side=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    frame = np.full((40, 60, 3), 100, dtype=np.uint8)
    assert np.array_equal(heatmap_overlay(frame, np.zeros((32, 32)), prep), frame)
    hot = np.zeros((32, 32))
    hot[:4, :] = 1.0  # the top rows of the crop
    tinted = heatmap_overlay(frame, hot, prep)
    changed = (tinted != frame).any(axis=2)
    assert changed[:5, 10:50].all() and not changed[10:, :].any()  # top of the centred 40x40 crop only
    assert not changed[:, :10].any() and not changed[:, 50:].any()  # outside the crop the model never saw
    stretched = heatmap_overlay(frame, hot, prep.model_copy(update={"fit": "stretch"}))
    changed = (stretched != frame).any(axis=2)
    assert changed[:5, :].all() and not changed[6:, :].any()  # the model saw the whole width, squeezed


def test_fit_heatmap_puts_a_sealed_decoder_in_the_bundle_and_the_stream_draws_it(tiny_model, tiny_dataset, tmp_path):
    from pipeline.cli import main
    from pipeline.detect import Detector, load_clips
    from pipeline.detect.evidence import Evidence
    from pipeline.fileio import verify_directory
    from pipeline.stream.messages import ClipMessage
    from pipeline.stream.steps.classify import ClassifierStep

    out = tmp_path / "bundle"
    args = ["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out), "--layers", "layer3",
            "layer4", "fc", "--false-alarm", "0.1", "--no-progress"]
    assert main([*args, "--heatmap", "--heatmap-epochs", "2"]) == 0
    verify_directory(out)
    digests = (out / "digests.json").read_text()
    assert "heatmap/decoder.json" in digests and "heatmap/decoder.safetensors" in digests
    detector = Detector.load(out)
    assert detector.heatmap is not None and detector.heatmap.layers_

    clips, _, _, _ = load_clips([(next((tiny_dataset / "MoveLeft").glob("*.avi")), 0)], detector.manifest.preprocessing,
                                progress=False)
    message = ClipMessage.from_array(clips[0], stream_id="cam", seq=0, first_frame=0, last_frame=len(clips[0]) - 1,
                                     pts=[float(i) for i in range(len(clips[0]))])
    with_heat = ClassifierStep.from_detector(detector)([message])[0]
    plain = ClassifierStep.from_detector(Detector.load(out), thumbnail_size=160)
    plain.evidence = Evidence()
    without = plain([message])[0]
    assert with_heat.thumbnail.startswith(b"\xff\xd8\xff") and with_heat.prediction == without.prediction
    assert with_heat.feature_arrays().keys() == without.feature_arrays().keys()
    no_thumbnails = ClassifierStep.from_detector(Detector.load(out), thumbnail_size=0)
    no_thumbnails.evidence.heatmap.decode_tensor = None  # calling the decoder would fail: with no thumbnail it must not run
    assert no_thumbnails([message])[0].thumbnail is None

    results = tmp_path / "evaluation"  # evaluate reads the bundle's own decoder rather than training another
    assert main(["evaluate", "--bundle", str(out), "--data", str(tiny_dataset), "--out", str(results), "--attacks",
                 "--tamper", "covered", "--surrogate", "none", "--detectors", "heatmap", "--no-progress"]) == 0
    block = json.loads((results / "results.json").read_text())["zoo"]["heatmap"]
    assert block["decoder"] == "bundle" and block["floor"] == detector.heatmap.floor_ > 0
    assert set(block["raw"]) == set(block["sets"]) >= {"clean", "tamper_covered"}
    assert all(block["sets"][name]["mean"] <= block["raw"][name]["mean"] for name in block["sets"])
    assert "Decoder: the bundle's own." in (results / "results.md").read_text()

    assert main(args) == 0  # refitted without --heatmap: the earlier decoder goes with the bundle it belonged to
    assert not (out / "heatmap").exists() and Detector.load(out).heatmap is None
    (out / "heatmap").mkdir()
    (out / "heatmap" / "notes.txt").write_text("mine")
    assert main(args) == 2  # a file no bundle wrote is never deleted
    assert (out / "heatmap" / "notes.txt").read_text() == "mine"
