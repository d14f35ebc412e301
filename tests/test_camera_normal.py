"""Per-camera normal models: scene statistics, the online Gaussian and its p-values, the config, the density step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import chi2

from pipeline.config import ConfigError, parse_config
from pipeline.config.camera import CameraDirectory, CameraNormalConfig
from pipeline.data.cameras import camera_scenario
from pipeline.detect import Detector, DetectorBundle, model_input
from pipeline.detect.camera import (
    SCENE_FEATURES,
    CameraError,
    CameraNormal,
    _scaled_chi2,
    combined_p_value,
    scene_statistics,
)
from pipeline.models import Preprocessing
from pipeline.stream.messages import EmbeddingMessage, LayerFeatures, decode, encode
from pipeline.stream.steps.classify import ClassifierStep
from pipeline.stream.steps.score import DensityStep

PREP = Preprocessing(clip_len=8, frame_step=1, short_side=32, crop=32, mean=(0.45,) * 3, std=(0.225,) * 3)


@pytest.fixture(scope="module")
def camera():
    """One simulated camera: a fixed scene, its usual activities, and tampered copies of its usual clips."""
    return next(camera_scenario(5, cameras=1, warmup=16, test=12, frames=8, width=64, height=48))


def statistics(clips: np.ndarray) -> dict[str, np.ndarray]:
    values = scene_statistics(model_input(clips, PREP), PREP.mean, PREP.std)
    return {name: values[:, i] for i, name in enumerate(SCENE_FEATURES)}


def test_scene_statistics_move_with_each_kind_of_tampering(camera):
    usual = statistics(camera.sets["usual"])
    assert scene_statistics(model_input(camera.sets["usual"], PREP), PREP.mean, PREP.std).shape == (
        12, len(SCENE_FEATURES))

    def mean(set_name: str, feature: str) -> float:
        return float(np.mean(statistics(camera.sets[set_name])[feature]))

    base = {name: float(np.mean(values)) for name, values in usual.items()}
    assert mean("tamper_covered", "contrast") < base["contrast"] - 0.5
    assert mean("tamper_defocus", "sharpness") < base["sharpness"] - 0.5
    assert mean("tamper_shake", "shift") > base["shift"] + 0.03
    assert mean("tamper_shake", "coherence") < base["coherence"]
    lit = statistics(camera.sets["tamper_lighting"])["brightness"]  # darker or brighter: paired with the usual
    assert np.mean(np.abs(lit - usual["brightness"])) > 0.3
    assert mean("tamper_redirect", "cut") > base["cut"] + 0.5


def test_phase_correlation_finds_a_known_global_shift():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    steady = np.stack([frame] * 8)[None]
    moving = np.stack([np.roll(frame, (2 * t, 0), axis=(0, 1)) for t in range(8)])[None]
    identity = Preprocessing(clip_len=8, frame_step=1, short_side=40, crop=40, mean=(0.0,) * 3, std=(1.0,) * 3)
    steady_values = scene_statistics(model_input(steady, identity), identity.mean, identity.std)[0]
    moving_values = scene_statistics(model_input(moving, identity), identity.mean, identity.std)[0]
    shift = SCENE_FEATURES.index("shift")
    assert steady_values[shift] == pytest.approx(0.0)
    assert moving_values[shift] == pytest.approx(2 / 40)


def gaussian_views(rng, rows, shift=0.0):
    scene = rng.normal(size=(rows, len(SCENE_FEATURES))) * np.linspace(0.5, 3, len(SCENE_FEATURES)) + shift
    activity = rng.normal(size=(rows, 20)) * np.linspace(3, 0.1, 20) + shift
    return {"scene": scene, "activity": activity}


def test_camera_normal_warms_up_then_flags_at_the_asked_rate():
    rng = np.random.default_rng(1)
    model = CameraNormal(warmup=256, memory=512, refit_every=64)
    model.partial_fit(gaussian_views(rng, 255))
    assert not model.ready
    with pytest.raises(CameraError, match="warming up"):
        model.p_values(gaussian_views(rng, 3))
    model.partial_fit(gaussian_views(rng, 1))
    assert model.ready
    p = model.p_values(gaussian_views(rng, 20_000))
    for key in ("scene", "activity", "camera"):
        assert 0.003 < np.mean(p[key] <= 0.01) < 0.02, key
    np.testing.assert_allclose(p["camera"], np.minimum(1, 2 * np.minimum(p["scene"], p["activity"])))
    shifted = model.p_values(gaussian_views(rng, 200, shift=4.0))
    assert np.mean(shifted["camera"] <= 0.01) > 0.95


def test_camera_normal_memory_is_bounded_and_follows_drift_without_touching_inputs():
    rng = np.random.default_rng(2)
    model = CameraNormal(warmup=64, memory=128, refit_every=32)
    model.partial_fit(gaussian_views(rng, 300))
    assert model.clips == 128 and all(buffer.shape[0] == 128 for buffer in model.buffers_.values())
    drifted = gaussian_views(rng, 50, shift=5.0)
    assert np.mean(model.p_values(drifted)["camera"] <= 0.01) > 0.9
    copy = {view: values.copy() for view, values in drifted.items()}
    for _ in range(6):  # a batch larger than the memory keeps its last rows
        model.partial_fit(gaussian_views(rng, 200, shift=5.0))
    for view in drifted:
        np.testing.assert_array_equal(drifted[view], copy[view])
    assert np.mean(model.p_values(drifted)["camera"] <= 0.01) < 0.1


def test_camera_normal_buffer_keeps_the_last_clips_in_order():
    model = CameraNormal(views=("activity",), warmup=16, memory=16)
    for start, count in ((0, 10), (10, 3), (13, 40)):  # the last batch is larger than the memory
        model.partial_fit({"activity": np.arange(start, start + count, dtype=float)[:, None].repeat(2, axis=1)})
    np.testing.assert_array_equal(model._ordered("activity")[:, 0], np.arange(37, 53))


def test_camera_normal_refuses_bad_settings_and_mismatched_features():
    with pytest.raises(CameraError, match="views"):
        CameraNormal(views=("scene", "weather"))
    with pytest.raises(CameraError, match="warmup <= memory"):
        CameraNormal(warmup=64, memory=32)
    model = CameraNormal(warmup=16, memory=16).partial_fit(gaussian_views(np.random.default_rng(3), 16))
    with pytest.raises(CameraError, match=r"scene features of shape \(2, 5\), expected \(N, 25\)"):
        model.partial_fit({"scene": np.zeros((2, 5)), "activity": np.zeros((2, 20))})
    with pytest.raises(CameraError, match="different numbers"):
        model.p_values({"scene": np.zeros((2, 25)), "activity": np.zeros((3, 20))})
    seen = model.seen_
    with pytest.raises(CameraError, match="activity features are not all finite"):
        model.partial_fit({"scene": np.zeros((1, 25)), "activity": np.full((1, 20), np.nan)})
    assert model.seen_ == seen  # refused before anything was learned


def test_scaled_chi2_recovers_a_chi2_and_the_weighted_bonferroni():
    samples = chi2.rvs(7, size=200_000, random_state=4) * 3.0
    scale, dof = _scaled_chi2(samples)
    assert scale == pytest.approx(3.0, rel=0.03) and dof == pytest.approx(7.0, rel=0.03)
    np.testing.assert_allclose(combined_p_value([0.004, 0.5, 0.9], [0.5, 0.001, 0.9], 0.25),
                               [0.004 / 0.75, 0.004, 1.0])
    with pytest.raises(CameraError, match="share"):
        combined_p_value([0.1], [0.1], 1.0)


def test_config_sets_defaults_and_per_camera_overrides(tmp_path, tiny_bundle):
    (tmp_path / "lobby").mkdir()
    data = {"bundle": str(tiny_bundle), "camera_normal": {"enabled": True, "warmup_clips": 32},
            "sources": [{"id": "lobby", "path": str(tmp_path / "lobby"), "normal": {"warmup_clips": 64}},
                        {"id": "gate", "uri": "rtsp://cam/1", "normal": {"enabled": False}}]}
    directory = parse_config(data, base=tmp_path).camera_directory()
    assert directory.resolve("lobby/monday/clip") == ("lobby", directory.cameras["lobby"])
    assert directory.cameras["lobby"].warmup_clips == 64 and directory.cameras["lobby"].memory_clips == 1024
    assert not directory.resolve("gate")[1].enabled
    assert directory.resolve("elsewhere") == ("elsewhere", directory.default)
    assert directory.default.warmup_clips == 32 and directory.enabled
    data["sources"][0]["normal"] = {"warmup_clips": 4096}
    with pytest.raises(ConfigError, match=r"sources\.0\.normal: .*memory_clips"):
        parse_config(data, base=tmp_path)
    with pytest.raises(ConfigError, match="camera_normal.warmup"):
        parse_config({"bundle": str(tiny_bundle), "camera_normal": {"warmup": 3}}, base=tmp_path)
    assert not parse_config({"bundle": str(tiny_bundle)}, base=tmp_path).camera_directory().enabled
    assert directory.resolve("gate/1") == ("gate/1", directory.default)  # only a directory's files share it


@pytest.fixture(scope="module")
def scene_classifier(tiny_bundle):
    step = ClassifierStep.from_detector(Detector.load(tiny_bundle), scene=True)
    yield step
    step.close()


def test_classifier_step_sends_scene_statistics_that_survive_the_bus(scene_classifier, camera, tiny_bundle):
    from pipeline.stream.messages import ClipMessage

    clips = [ClipMessage.from_array(clip, stream_id="cam", seq=i, first_frame=0, last_frame=7, pts=[0.0] * 8)
             for i, clip in enumerate(camera.sets["usual"][:3])]
    embeddings = scene_classifier(clips)
    expected = scene_statistics(model_input(camera.sets["usual"][:3], scene_classifier.preprocessing),
                                PREP.mean, PREP.std)
    np.testing.assert_allclose(np.stack([e.scene.array for e in embeddings]), expected, rtol=1e-5, atol=1e-6)
    assert decode(encode(embeddings[0]), expect=EmbeddingMessage).scene == embeddings[0].scene
    plain = ClassifierStep.from_detector(Detector.load(tiny_bundle))
    assert plain(clips[:1])[0].scene is None and b"scene" not in encode(plain(clips[:1])[0])
    plain.close()


def camera_embeddings(template: EmbeddingMessage, rng, count: int, *, start: int = 0, scene_shift=None):
    """Embeddings of one camera: the template's features and scene statistics with small noise."""
    out = []
    base = template.scene.array.astype(np.float64)
    for i in range(count):
        scene = base + rng.normal(0, 0.05, size=base.shape)
        if scene_shift is not None:
            scene = scene + scene_shift
        features = {layer: LayerFeatures.from_array(values.array + rng.normal(0, 0.01, size=values.dim))
                    for layer, values in template.features.items()}
        out.append(template.model_copy(update={"stream_id": "lobby/a.mp4", "seq": start + i, "features": features,
                                               "scene": LayerFeatures.from_array(scene)}))
    return out


def test_density_step_combines_the_bundle_and_the_camera(tiny_bundle, scene_classifier, camera):
    from pipeline.stream.messages import ClipMessage

    bundle = DetectorBundle.load(tiny_bundle)
    plain = DensityStep(bundle)
    clips = [ClipMessage.from_array(clip, stream_id="lobby/a.mp4", seq=i, first_frame=0, last_frame=7,
                                    pts=[0.0] * 8) for i, clip in enumerate(camera.sets["usual"])]
    embeddings = scene_classifier(clips)
    template = max(embeddings, key=lambda e: plain([e])[0].p_value)  # a clip the bundle finds ordinary
    rng = np.random.default_rng(6)
    settings = CameraNormalConfig(enabled=True, warmup_clips=32, memory_clips=64, refit_every=8, share=0.5)
    lobby = CameraDirectory(CameraNormalConfig(), {"lobby": settings}, frozenset({"lobby"}))
    step = DensityStep(bundle, cameras=lobby)
    alpha = step.alpha

    warmup = camera_embeddings(template, rng, 32)
    rates = []
    score = bundle.score
    bundle.score = lambda *args, **kwargs: rates.append(kwargs["alpha"]) or score(*args, **kwargs)
    verdicts = step(warmup)
    bundle.score = score
    assert rates == [alpha / 2]  # the bundle spends half the rate, warm-up included
    assert all(not v.camera_p_values for v in verdicts) and all(v.verdict == "normal" for v in verdicts)
    for message, alone in zip(verdicts, plain(warmup), strict=True):  # flagged exactly when p <= alpha
        assert message.p_value == pytest.approx(min(1.0, 2 * alone.p_value))
    model = step.cameras.models["lobby"]
    assert model.ready and model.seen_ == 32

    usual = camera_embeddings(template, rng, 4, start=100)
    judged = step(usual)
    for message, alone in zip(judged, plain(usual), strict=True):
        assert set(message.camera_p_values) == {"scene", "activity", "camera"}
        assert message.p_value == pytest.approx(min(1.0, 2 * min(alone.p_value, message.camera_p_values["camera"])))
    assert model.seen_ == 32 + sum(v.verdict == "normal" for v in judged)
    seen = model.seen_
    shift = np.zeros(len(SCENE_FEATURES))
    shift[SCENE_FEATURES.index("brightness")] = -3.0
    dark = camera_embeddings(template, rng, 3, start=200, scene_shift=shift)
    for message, alone in zip(step(dark), plain(dark), strict=True):
        assert alone.verdict == "normal" and message.verdict == "adversarial"
        assert message.camera_p_values["scene"] < 1e-6
        assert any("unlike camera lobby's own" in reason and "brightness" in reason for reason in message.reasons)
    assert model.seen_ == seen  # flagged clips are not learned
    assert DensityStep(bundle, cameras=CameraDirectory()).cameras is None

    real = bundle.score  # the bundle flags the next clip too, as novel, less strongly than the camera does
    bundle.score = lambda *args, **kwargs: dataclasses.replace(
        real(*args, **kwargs), p_value=np.array([1e-4]), verdicts=["novel"], reasons=[["the bundle's reason"]])
    judged = step(camera_embeddings(template, rng, 1, start=300, scene_shift=shift))[0]
    bundle.score = real
    assert judged.verdict == "adversarial" and judged.p_value == pytest.approx(2 * judged.camera_p_values["camera"])
    assert "unlike camera lobby's own" in judged.reasons[0] and judged.reasons[1] == "the bundle's reason"


def test_density_step_leaves_other_cameras_and_bad_clips_to_the_bundle(tiny_bundle, scene_classifier, camera,
                                                                      monkeypatch, caplog):
    from pipeline.stream.messages import ClipMessage
    from pipeline.stream.steps import camera as camera_step

    bundle = DetectorBundle.load(tiny_bundle)
    plain = DensityStep(bundle)
    clips = [ClipMessage.from_array(clip, stream_id="lobby/a.mp4", seq=i, first_frame=0, last_frame=7,
                                    pts=[0.0] * 8) for i, clip in enumerate(camera.sets["usual"][:4])]
    embeddings = scene_classifier(clips)
    on = CameraNormalConfig(enabled=True, warmup_clips=16, memory_clips=16)
    directory = CameraDirectory(on, {"gate": CameraNormalConfig(enabled=False)}, frozenset({"lobby"}))
    step = DensityStep(bundle, cameras=directory)
    gate = [e.model_copy(update={"stream_id": "gate"}) for e in embeddings]
    no_scene = embeddings[0].model_copy(update={"stream_id": "lobby/b.mp4", "scene": None})
    broken = embeddings[1].model_copy(update={
        "stream_id": "lobby/c.mp4", "scene": LayerFeatures.from_array(np.full(len(SCENE_FEATURES), np.nan))})
    with caplog.at_level("WARNING"):
        judged = step([*gate, no_scene, broken])
    expected = plain([*gate, no_scene, broken])
    assert [v.p_value for v in judged] == [v.p_value for v in expected]  # the full rate, no camera share
    assert not any(v.camera_p_values for v in judged)
    assert "camera lobby: embedding lobby/b.mp4:0 has no scene statistics" in caplog.text
    assert "lobby" not in step.cameras.models or step.cameras.models["lobby"].clips == 0

    monkeypatch.setattr(camera_step, "MAX_CAMERAS", 2)
    for name in ("one", "two", "three"):
        step([embeddings[2].model_copy(update={"stream_id": name})])
    assert list(step.cameras.models) == ["two", "three"]  # the least recently seen camera is dropped
    again = embeddings[3].model_copy(update={"stream_id": "three"})
    step([again])
    step([again])  # redelivered after a crash: learned once
    assert step.cameras.models["three"].clips == 2
