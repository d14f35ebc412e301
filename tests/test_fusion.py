"""Fused groups chosen on auxiliary outliers: the elimination, the calibration without a group, bundles, outliers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pipeline_helpers import first_test_clips

from pipeline.attacks import Normalize, from_uint8
from pipeline.cli import main
from pipeline.detect import Calibration, Detector, DetectorBundle
from pipeline.detect.bundle import BundleError
from pipeline.detect.calibration import CalibrationError
from pipeline.detect.features import model_inputs
from pipeline.detect.fusion import (
    AUXILIARY_KINDS,
    GRADIENT_STEP,
    MIN_CLIPS,
    auxiliary_outliers,
    choose_fused_groups,
)
from pipeline.detect.torch_scoring import TorchBundleScorer
from pipeline.metrics import auroc
from pipeline.models import load_model


def test_elimination_drops_a_group_that_hides_outliers_and_keeps_weak_but_honest_ones():
    rng = np.random.default_rng(0)
    clean = {name: rng.normal(size=3000) for name in ("a", "b", "c", "d")}
    motion = {"a": rng.normal(-2.0, 1.0, 1000), "b": rng.normal(1.0, 1.0, 1000), "c": rng.normal(size=1000),
              "d": rng.normal(-0.5, 1.0, 1000)}
    pixels = {"a": rng.normal(size=1000), "b": rng.normal(size=1000), "c": rng.normal(-3.0, 1.0, 1000),
              "d": rng.normal(-0.5, 1.0, 1000)}
    choice = choose_fused_groups(clean, {"motion": motion, "pixels": pixels})
    # b rates motion outliers more typical than clean clips; d is weaker than a and c but never misleading, and
    # dropping it would raise the mean too (it adds its clean tail), so only the rule keeps it
    assert choice.kept == ["a", "c", "d"] and choice.dropped == ["b"]
    assert choice.after["motion"] > choice.before["motion"] + 0.02
    assert choice.after["pixels"] >= choice.before["pixels"] - 0.005
    assert len(choice.steps) == 1 and choice.steps[0].startswith("without b")
    without_d = auroc(np.minimum(clean["a"], clean["c"]), np.minimum(motion["a"], motion["c"]))
    assert without_d > choice.after["motion"]
    alone = choose_fused_groups({"a": clean["a"]}, {"motion": {"a": motion["a"]}})
    assert alone.kept == ["a"] and alone.dropped == []
    with pytest.raises(ValueError, match="needs the scores of the groups"):
        choose_fused_groups(clean, {"motion": {"a": motion["a"]}})


def _three_groups(rng, n=4000):
    keys = ["layer1/sep", "fc/sep", "fc/logsumexp"]
    scores = {key: rng.normal(size=n) for key in keys}
    return Calibration.fit(scores, np.full(n, 0.9), keys, alpha=0.05, low_level_keys=["layer1/sep"],
                           output_keys=["fc/logsumexp"]), scores


def test_a_calibration_without_a_group_fuses_the_rest_conformally_and_the_group_still_labels():
    rng = np.random.default_rng(1)
    full, scores = _three_groups(rng)
    cal = full.without_groups(["low-level"], scores)
    assert full.unfused_groups == [] and cal.unfused_groups == ["low-level"]  # the original is left as it was
    assert cal.fused_groups == ["semantic", "output"] and list(cal.groups) == list(full.groups)
    groups = cal.group_scores(scores)
    np.testing.assert_allclose(np.sort(np.minimum(groups["semantic"], groups["output"])), cal.sorted_fused)
    fresh = {key: rng.normal(size=20000) for key in scores}
    _, _, results = cal.verdicts(fresh, np.full(20000, 0.9))
    assert abs(np.mean([r[0] != "normal" for r in results]) - 0.05) < 0.01, "conformal on the remaining groups"
    painted_only = {"layer1/sep": np.array([-8.0]), "fc/sep": np.array([0.0]), "fc/logsumexp": np.array([0.0])}
    assert cal.verdicts(painted_only, np.array([0.2]))[2][0][0] == "normal"  # no longer fused
    assert full.verdicts(painted_only, np.array([0.2]))[2][0][0] == "adversarial"
    both = {"layer1/sep": np.array([-8.0]), "fc/sep": np.array([-8.0]), "fc/logsumexp": np.array([0.0])}
    unsure = {**both, "layer1/sep": np.array([0.0])}
    verdict, reasons = cal.verdicts(both, np.array([0.2]))[2][0]
    assert verdict == "adversarial" and "the pixels were tampered with" in reasons[-1]
    assert cal.verdicts(unsure, np.array([0.2]))[2][0][0] == "novel"  # the pixels look ordinary: unsure = novel
    again = Calibration.from_saved(cal.settings(), cal.arrays())
    assert again.unfused_groups == ["low-level"] and again.verdicts(both, np.array([0.2]))[2][0][0] == "adversarial"
    with pytest.raises(CalibrationError, match="at least one must stay fused"):
        full.without_groups(list(full.groups), scores)
    with pytest.raises(CalibrationError, match="cannot leave out groups"):
        full.without_groups(["border"], scores)
    with pytest.raises(CalibrationError, match="not all"):
        Calibration.from_saved({**full.settings(), "unfused_groups": ["nowhere"]}, full.arrays())


def test_fit_leaves_out_named_groups_in_a_version_3_bundle_that_scores_alike_in_torch(
        tiny_dataset, tiny_model, tmp_path, capsys):
    args = ["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--layers", "layer3", "layer4", "fc",
            "--no-progress", "--false-alarm", "0.1"]
    assert main([*args, "--out", str(tmp_path / "all"), "--fused-groups", "all"]) == 0
    assert json.loads((tmp_path / "all" / "bundle.json").read_text())["format_version"] == 2
    assert main([*args, "--out", str(tmp_path / "two"), "--fused-groups", "semantic", "output"]) == 0
    assert "left out: low-level" in capsys.readouterr().out
    assert json.loads((tmp_path / "two" / "bundle.json").read_text())["format_version"] == 3
    detector = Detector.load(tmp_path / "two")
    assert detector.bundle.calibration.fused_groups == ["semantic", "output"]
    clips, _ = first_test_clips(tiny_dataset, detector.manifest.preprocessing)
    noise = np.random.default_rng(0).integers(0, 256, size=clips[:4].shape, dtype=np.uint8)
    clips = np.concatenate([clips, noise])  # pixels the low-level layers find improbable
    features = detector.features(clips)
    scores = detector.score_features(features.layers, features.softmax)
    groups = detector.bundle.calibration.group_scores(scores.loglik)
    np.testing.assert_allclose(scores.fused, np.minimum(groups["semantic"], groups["output"]))
    assert (groups["low-level"] < scores.fused).any()  # a fusion over every group would differ on these clips
    with TorchBundleScorer(detector.bundle, detector.model) as scorer, torch.no_grad():
        torch_scores = scorer(model_inputs(clips, detector.manifest.preprocessing))
    np.testing.assert_allclose(torch_scores.fused.numpy(), scores.fused, rtol=1e-6, atol=1e-5)
    assert main([*args, "--out", str(tmp_path / "bad"), "--fused-groups", "semantic", "pixels"]) == 2
    assert "--fused-groups pixels: not a group of this bundle" in capsys.readouterr().err


def test_recalibrating_keeps_the_choice_for_the_groups_that_remain_and_drops_a_stale_record(
        tiny_dataset, tiny_model, tmp_path):
    out = tmp_path / "bundle"
    assert main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out), "--layers",
                 "layer3", "layer4", "fc", "--no-progress", "--false-alarm", "0.1", "--evidence", "border",
                 "--fused-groups", "low-level", "semantic", "output"]) == 0
    detector = Detector.load(out)
    assert detector.bundle.calibration.unfused_groups == ["border"]
    clips, _ = first_test_clips(tiny_dataset, detector.manifest.preprocessing)
    bundle = detector.bundle
    with_border, without, band = detector.features(clips), detector.features(clips, evidence=False), bundle.border
    bundle.calibrate(with_border, 0.25)  # the same groups: the choice is kept
    assert bundle.calibration.unfused_groups == ["border"]
    bundle.settings["fusion"] = {"dropped": ["border"]}
    bundle.calibrate(without, 0.25)  # no border group any more: every group fused
    assert bundle.calibration.unfused_groups == [] and "fusion" not in bundle.settings
    bundle.calibrate(with_border, 0.25, border=band, unfused_groups=["low-level"])
    assert bundle.calibration.fused_groups == ["semantic", "output", "border"]
    bundle.save(tmp_path / "again")
    manifest = json.loads((tmp_path / "again" / "bundle.json").read_text())
    assert manifest["format_version"] == 3
    manifest["format_version"] = 2  # what an older reader would misread: refused
    (tmp_path / "again" / "bundle.json").write_text(json.dumps(manifest))
    from pipeline.fileio import seal_directory

    seal_directory(tmp_path / "again")
    with pytest.raises(BundleError, match="cannot express"):
        DetectorBundle.load(tmp_path / "again")


def test_fit_keeps_every_group_when_too_few_clips_make_the_outliers(tiny_bundle):
    bundle = DetectorBundle.load(tiny_bundle)
    fusion = bundle.settings["fusion"]
    assert fusion["auxiliary_clips"] < MIN_CLIPS and fusion["dropped"] == []
    assert "fewer than" in fusion["steps"][0] and bundle.calibration.unfused_groups == []


def test_auxiliary_outliers_are_made_from_the_clips_without_changing_them(tiny_dataset, tiny_model):
    model, manifest = load_model(tiny_model)
    clips, labels = first_test_clips(tiny_dataset, manifest.preprocessing)
    pixels = from_uint8(clips)
    before = pixels.clone()
    outliers = auxiliary_outliers(pixels, labels, model, Normalize.from_preprocessing(manifest.preprocessing),
                                  classes=3, seed=0, batch_size=4)
    assert torch.equal(pixels, before) and list(outliers) == list(AUXILIARY_KINDS)
    assert all(value.shape == pixels.shape for value in outliers.values())
    frame_sums = pixels.sum(dim=(1, 3, 4))
    shuffled_sums = outliers["shuffle"].sum(dim=(1, 3, 4))
    torch.testing.assert_close(frame_sums.sort(dim=1).values, shuffled_sums.sort(dim=1).values)  # same frames
    half = pixels.shape[2] // 2
    torch.testing.assert_close(outliers["splice"][:, :, :half], pixels[:, :, :half])
    for i, spliced in enumerate(outliers["splice"]):  # the second half is another class's clip
        partners = [j for j in range(len(pixels)) if torch.equal(spliced[:, half:], pixels[j, :, half:])]
        assert partners and all(labels[j] != labels[i] for j in partners)
    changed = (outliers["corrupt"] != pixels).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.5
    step = (outliers["gradient"] - pixels).abs()
    assert step.max() <= GRADIENT_STEP + 1e-5 and step.max() > 0


def test_auto_scores_the_outliers_a_chunk_at_a_time(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    import pipeline.cli.fit as fit_command
    import pipeline.detect.fusion as fusion_module

    monkeypatch.setattr(fit_command, "AUXILIARY_CHUNK", 5)
    monkeypatch.setattr(fusion_module, "MIN_CLIPS", 1)
    out = tmp_path / "bundle"
    assert main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out), "--layers",
                 "layer3", "layer4", "fc", "--no-progress", "--false-alarm", "0.1", "--seed", "1"]) == 0
    bundle = DetectorBundle.load(out)
    fusion = bundle.settings["fusion"]
    made = fusion["auxiliary_clips"]
    assert made > 5 and fusion["clips"] == {"clean": bundle.settings["calibration_clips"],
                                            **{kind: made for kind in AUXILIARY_KINDS}}
    assert fusion["dropped"] == bundle.calibration.unfused_groups
    assert sorted(fusion["kept"] + fusion["dropped"]) == sorted(bundle.calibration.groups)
    before, after = np.array(list(fusion["auroc_before"].values())), np.array(list(fusion["auroc_after"].values()))
    assert after.mean() >= before.mean() and np.all(after >= before - 0.005)
