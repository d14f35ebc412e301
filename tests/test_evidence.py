"""Evidence fused besides the densities (pipeline.detect.evidence): the masked-border consistency and the heatmap score,
their calibration groups, and one score from every path (Detector, torch scorer, streaming steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_helpers import first_test_clips

from pipeline.attacks import FramingAttack, Normalize, from_uint8
from pipeline.cli import main
from pipeline.detect import BundleError, Calibration, Detector, DetectorBundle
from pipeline.detect.calibration import ADVERSARIAL, NORMAL, NOVEL, CalibrationError
from pipeline.detect.evidence import (
    BORDER_KEY,
    HEATMAP_KEY,
    Evidence,
    border_consistency,
    default_border,
    mask_border,
)
from pipeline.detect.features import model_inputs, pixel_input
from pipeline.detect.torch_scoring import TorchBundleScorer
from pipeline.errors import ClipwatchError
from pipeline.export import ExportError, export_bundle
from pipeline.models import load_model
from pipeline.stream.messages import ClipMessage, EmbeddingMessage, decode, encode
from pipeline.stream.steps import Rejected
from pipeline.stream.steps.classify import ClassifierStep
from pipeline.stream.steps.score import DensityStep


@pytest.fixture(scope="module")
def evidence_bundle(tiny_dataset, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("evidence-bundle")
    assert main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out), "--layers", "layer3",
                 "layer4", "fc", "--false-alarm", "0.1", "--evidence", "heatmap", "border", "--heatmap-epochs", "1",
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def detector(evidence_bundle):
    return Detector.load(evidence_bundle)


@pytest.fixture(scope="module")
def test_clips(detector, tiny_dataset):
    return first_test_clips(tiny_dataset, detector.manifest.preprocessing)


def test_mask_border_zeroes_the_band_only_and_leaves_the_input():
    inputs = torch.randn(2, 3, 4, 10, 12)
    kept = inputs.clone()
    masked = mask_border(inputs, 2)
    assert torch.equal(inputs, kept)
    assert masked[..., :2, :].abs().sum() == masked[..., -2:, :].abs().sum() == 0
    assert masked[..., :2].abs().sum() == masked[..., -2:].abs().sum() == 0
    assert torch.equal(masked[..., 2:-2, 2:-2], inputs[..., 2:-2, 2:-2])
    assert default_border(80) == 4 and default_border(112) == 6 and default_border(8) == 1
    for width in (0, 5):  # nothing masked, or nothing left inside a 10-pixel side
        with pytest.raises(ValueError, match="border band"):
            mask_border(inputs, width)


def test_border_consistency_is_p_log_q_and_a_frame_inside_the_band_cannot_move_q(tiny_model, test_clips, detector):
    model, manifest = load_model(tiny_model)
    model.eval()
    prep = manifest.preprocessing
    normalize = Normalize.from_preprocessing(prep)
    clips, labels = test_clips
    pixels = from_uint8(clips)
    inputs = normalize(pixels)
    with torch.no_grad():
        logits = model(inputs)
        expected = (torch.softmax(logits.double(), 1)
                    * torch.log_softmax(model(mask_border(inputs, 2)).double(), 1)).sum(1)
        np.testing.assert_allclose(border_consistency(model, inputs, logits, 2).numpy(), expected.numpy(), rtol=1e-12)
    framed = FramingAttack(width=2, steps=5, seed=0).attack_batch(model, pixels, torch.as_tensor(labels), normalize)
    assert not torch.equal(framed, pixels)
    with torch.no_grad():  # whatever the frame does to the prediction, the masked view sees none of it
        torch.testing.assert_close(model(mask_border(normalize(framed), 2)), model(mask_border(inputs, 2)))


def test_calibration_gives_each_evidence_key_a_group_and_a_reason():
    rng = np.random.default_rng(0)
    n = 200
    scores = {"a/sep": rng.normal(size=n), "b/sep": rng.normal(size=n), BORDER_KEY: rng.normal(size=n),
              HEATMAP_KEY: rng.normal(size=n)}
    calibration = Calibration.fit(scores, rng.uniform(size=n), list(scores), 0.05, ["a/sep"], [],
                                  [BORDER_KEY, HEATMAP_KEY])
    assert calibration.groups == {"low-level": ["a/sep"], "semantic": ["b/sep"], "border": [BORDER_KEY],
                                  "heatmap": [HEATMAP_KEY]}
    clip = {key: np.zeros(4) for key in scores}
    clip[BORDER_KEY] = np.array([0.0, -40.0, -40.0, 0.0])
    clip[HEATMAP_KEY] = np.array([0.0, 0.0, 0.0, -40.0])
    _, p, results = calibration.verdicts(clip, np.array([0.9, 0.9, 0.1, 0.1]))  # the median softmax is about 0.5
    assert [r[0] for r in results] == [NORMAL, ADVERSARIAL, NOVEL, ADVERSARIAL] and max(p[1:]) < 0.05
    assert "border" in results[1][1][0] and any("masked" in reason for reason in results[1][1])
    assert "heatmap" in results[3][1][0] and any("thumbnail" in reason for reason in results[3][1])
    with pytest.raises(CalibrationError, match="distinct"):
        Calibration.fit(scores, rng.uniform(size=n), list(scores), 0.05, [BORDER_KEY], [], [BORDER_KEY])


def test_fit_fuses_the_evidence_and_every_path_scores_it_alike(detector, test_clips):
    bundle = detector.bundle
    assert bundle.evidence_keys == [HEATMAP_KEY, BORDER_KEY] and bundle.border == default_border(32)
    assert list(bundle.calibration.groups)[-2:] == ["heatmap", "border"]
    clips, _ = test_clips
    features, scores = detector.score_clips(clips)
    assert set(features.evidence) == {HEATMAP_KEY, BORDER_KEY}
    prep = detector.manifest.preprocessing
    heat = detector.heatmap.heatmaps(detector.model, pixel_input(clips, prep), Normalize.from_preprocessing(prep))
    np.testing.assert_allclose(features.evidence[HEATMAP_KEY], -heat.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
    with pytest.raises(BundleError, match="fuses"):
        bundle.score(features.layers, features.softmax.max(axis=1))

    with TorchBundleScorer(bundle, detector.model, heatmap=detector.heatmap) as scorer, torch.no_grad():
        torch_scores = scorer(model_inputs(clips, detector.manifest.preprocessing))
    for key in (HEATMAP_KEY, BORDER_KEY):
        np.testing.assert_allclose(torch_scores.loglik[key].numpy(), features.evidence[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch_scores.fused.numpy(), scores.fused, rtol=1e-4, atol=1e-4)
    with pytest.raises(ClipwatchError, match="decoder"):
        TorchBundleScorer(bundle, detector.model)

    messages = [ClipMessage.from_array(clip, stream_id="cam", seq=i, first_frame=0, last_frame=len(clip) - 1,
                                       pts=[float(t) for t in range(len(clip))]) for i, clip in enumerate(clips)]
    embeddings = ClassifierStep.from_detector(detector, thumbnail_size=0)(messages)
    for key in (HEATMAP_KEY, BORDER_KEY):
        np.testing.assert_allclose([e.evidence[key] for e in embeddings], features.evidence[key], rtol=1e-5,
                                   atol=1e-6)
    wire = [decode(encode(e), expect=EmbeddingMessage) for e in embeddings]
    verdicts = DensityStep(bundle)(wire)
    np.testing.assert_allclose([v.fused_score for v in verdicts], scores.fused, rtol=1e-4, atol=1e-4)
    assert [v.verdict for v in verdicts] == scores.verdicts
    assert verdicts[0].log_likelihoods["border"]["consistency"] == pytest.approx(embeddings[0].evidence[BORDER_KEY])

    bare = embeddings[0].model_copy(update={"evidence": {}})
    assert b"evidence" not in encode(bare)  # what needs no evidence stays readable by earlier version-1 readers
    (rejected,) = DensityStep(bundle)([bare])
    assert isinstance(rejected, Rejected) and BORDER_KEY in rejected.reason


def test_adaptive_framing_against_the_fused_evidence_runs_and_keeps_the_masked_view(detector, test_clips):
    """The attacker descends through the heatmap and the border consistency too; the masked view still never moves."""
    from pipeline.attacks import framing_adaptive

    clips, labels = test_clips
    normalize = Normalize.from_preprocessing(detector.manifest.preprocessing)
    pixels = from_uint8(clips)
    with TorchBundleScorer(detector.bundle, detector.model, normalize, heatmap=detector.heatmap) as scorer:
        attack = FramingAttack(width=detector.bundle.border, steps=3, seed=0)
        framed = framing_adaptive(scorer, pixels, torch.as_tensor(labels), lam=1.0, attack=attack)
        with torch.no_grad():
            after = scorer(framed)
    assert torch.isfinite(after.fused).all() and not torch.equal(framed, pixels)
    assert all(p.grad is None for p in detector.heatmap.decoder_.parameters())  # the decoder took no gradient
    with torch.no_grad():
        masked = detector.model(mask_border(normalize(framed), detector.bundle.border))
        torch.testing.assert_close(masked, detector.model(mask_border(normalize(pixels), detector.bundle.border)))


def test_fit_refuses_a_border_as_wide_as_half_the_input_and_export_refuses_evidence(
        tiny_dataset, tiny_model, evidence_bundle, tmp_path, capsys):
    assert main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(tmp_path / "b"),
                 "--layers", "fc", "--evidence", "border", "--border", "16", "--no-progress"]) == 2
    assert "--border 16" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with pytest.raises(ExportError, match="evidence"):
        export_bundle(evidence_bundle, tmp_path / "export")
    with pytest.raises(ValueError, match="decoder"):
        Evidence((HEATMAP_KEY,))
    assert main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(tmp_path / "c"),
                 "--layers", "fc", "--border", "3", "--no-progress"]) == 2  # a band for evidence not asked for
    assert "not asked for" in capsys.readouterr().err


def test_calibrate_keeps_the_densities_and_leaves_the_bundle_as_it_was_when_it_fails(evidence_bundle, detector,
                                                                                       test_clips):
    clips, _ = test_clips
    bundle = DetectorBundle.load(evidence_bundle)
    densities = bundle.densities
    before = dict(bundle.settings), bundle.calibration
    with pytest.raises(BundleError, match="calibration clips"):
        bundle.calibrate(detector.features(clips), 0.01)  # a handful of clips cannot reach a 1 % rate
    assert bundle.settings == before[0] and bundle.calibration is before[1]
    bundle.calibrate(detector.features(clips), 0.2)
    assert bundle.evidence_keys == [HEATMAP_KEY, BORDER_KEY] and bundle.border == before[0]["border"]
    assert bundle.settings["calibration_clips"] == len(clips) and bundle.calibration.alpha == 0.2
    bundle.calibrate(detector.features(clips, evidence=False))
    assert bundle.evidence_keys == [] and bundle.border == 0 and bundle.densities is densities
    assert not {"heatmap", "border"} & set(bundle.calibration.groups)
    with pytest.raises(CalibrationError, match="distinct prefixes"):
        Calibration.fit({"a/sep": np.arange(5.0), "b/x": np.arange(5.0), "b/y": np.arange(5.0)}, np.ones(5),
                        ["a/sep", "b/x", "b/y"], 0.2, evidence_keys=["b/x", "b/y"])


def test_evaluate_reports_the_evidence_rows_and_attacks_through_them(evidence_bundle, tiny_dataset, tmp_path):
    import json

    out = tmp_path / "results"
    assert main(["evaluate", "--bundle", str(evidence_bundle), "--data", str(tiny_dataset), "--out", str(out),
                 "--surrogate", "none", "--attacks", "framing_whitebox", "framing_adaptive", "--lambdas", "1",
                 "--framing-steps", "2", "--detectors", "msp", "--max-clips-per-video", "1", "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    rows = {(r["ood_set"], r["layer"], r["density"]) for r in report["detection"]}
    assert {("framing_whitebox", "border", "consistency"), ("framing_whitebox", "heatmap", "mean")} <= rows
    (row,) = report["adaptive"]["rows"]
    assert {"border/consistency", "heatmap/mean", "all/fused"} <= set(row["auroc"])
    assert "border" in (out / "results.md").read_text()


def test_an_export_of_a_border_bundle_scores_the_masked_view_like_torch(tiny_dataset, tiny_model, test_clips, tmp_path):
    from pipeline.export import OnnxDetector

    out = tmp_path / "bundle"
    assert main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out), "--layers", "layer4",
                 "fc", "--false-alarm", "0.1", "--evidence", "border", "--no-progress"]) == 0
    export_bundle(out, tmp_path / "export")
    clips, _ = test_clips
    onnx_features, onnx_scores = OnnxDetector.load(tmp_path / "export").score_clips(clips)
    features, scores = Detector.load(out).score_clips(clips)
    assert set(onnx_features.evidence) == set(features.evidence) == {BORDER_KEY}
    np.testing.assert_allclose(onnx_features.evidence[BORDER_KEY], features.evidence[BORDER_KEY], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(onnx_scores.fused, scores.fused, rtol=1e-3, atol=1e-3)
