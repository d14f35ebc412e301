"""Detector bundles end to end on real encoded videos: fit via the CLI, save/load, scoring, calibration, errors."""

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.data import UCF101, synthesize
from pipeline.detect import BundleError, Calibration, DetectorBundle, bundle_digest, extract_video_features
from pipeline.detect.calibration import conformal_p_values
from pipeline.fileio import seal_directory
from pipeline.models import load_model
from tests.conftest import CLASSES


def test_fit_cli_writes_a_pickle_free_bundle(tiny_bundle, tiny_model):
    files = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    assert files - {"model/digests.json"} == {"bundle.json", "calibration.safetensors", "densities/manifest.json",
                                               "densities/arrays.safetensors", "digests.json", "model/model.json",
                                               "model/model.safetensors"}
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    assert manifest["layers"] == ["layer3", "layer4", "fc"]
    assert manifest["calibration"]["low_level_keys"] == ["layer3/sep"]
    assert manifest["model"]["sha256"] == load_model(tiny_model)[1].sha256
    bundle = DetectorBundle.load(tiny_bundle)
    assert set(bundle.densities) == {f"{layer}/{d}" for layer in ("layer3", "layer4", "fc") for d in ("gmm", "sep", "tied")}
    assert bundle.resolve_model(tiny_bundle) == tiny_bundle / "model"  # a copy: the bundle moves as one folder
    assert (tiny_bundle / "model" / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert bundle.settings["train_clips"] > 0 and bundle.settings["calibration_clips"] > 0


def test_bundle_scores_are_finite_and_flag_shifted_features(tiny_bundle, tiny_dataset, tiny_model):
    bundle = DetectorBundle.load(tiny_bundle)
    model, manifest = load_model(tiny_model)
    test = UCF101(tiny_dataset, split=1, subset="test")
    novel = UCF101(tiny_dataset / "novel", split=1, subset="test")
    layers = bundle.layers
    clean = extract_video_features(model, manifest.preprocessing, [(s.path, s.label) for s in test.samples], layers,
                                   progress=False)
    scores = bundle.score(clean.layers, clean.softmax.max(axis=1))
    assert len(scores.verdicts) == len(clean)
    assert all(np.isfinite(v).all() and np.std(v) > 0 for v in scores.loglik.values())
    assert np.all((scores.p_value > 0) & (scores.p_value <= 1))
    assert set(scores.verdicts) <= {"normal", "novel", "adversarial"}
    assert all(reasons for verdict, reasons in zip(scores.verdicts, scores.reasons, strict=True) if verdict != "normal")
    shifted = {k: v + 25.0 * np.abs(v).mean() for k, v in clean.layers.items()}
    far = bundle.score(shifted, clean.softmax.max(axis=1))
    assert np.all(np.array(far.verdicts) != "normal")
    assert novel.samples


def test_bundle_refuses_other_model_version_and_missing_arrays(tiny_bundle, tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    bundle = DetectorBundle.load(copy)
    bundle.model_ref = dict(bundle.model_ref, sha256="0" * 64)
    with pytest.raises(BundleError, match="does not match the bundle's model"):
        bundle.resolve_model(copy)
    # Resealed after each edit, as a bundle written by another clipwatch version would be: the checks behind the
    # digests still hold.
    manifest = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps(dict(manifest, format_version=7)))
    seal_directory(copy)
    with pytest.raises(BundleError, match="version 7"):
        DetectorBundle.load(copy)
    edited = dict(manifest, calibration=dict(manifest["calibration"], low_level_keys=[]))
    (copy / "bundle.json").write_text(json.dumps(edited))
    seal_directory(copy)
    with pytest.raises(BundleError, match="statistics for 3 groups, its settings name 2"):
        DetectorBundle.load(copy)
    (copy / "bundle.json").write_text(json.dumps(manifest))
    (copy / "densities" / "arrays.safetensors").unlink()
    seal_directory(copy)
    with pytest.raises(BundleError, match="cannot read arrays"):
        DetectorBundle.load(copy)
    with pytest.raises(BundleError, match="not a detector bundle"):
        DetectorBundle.load(tmp_path / "nothing")


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


BUNDLE_EDITS = {  # edit -> (file named by the error, reason, how to make the edit in a bundle directory)
    "alpha": ("bundle.json", "SHA-256 mismatch",
              lambda d: _edit_json(d / "bundle.json", lambda m: m["calibration"].update(alpha=1e-12))),
    "densities": ("densities/manifest.json", "SHA-256 mismatch",
                  lambda d: _edit_json(d / "densities" / "manifest.json", lambda m: m["metadata"].update(note="x"))),
    "stray": ("densities/extra.json", "not listed in digests.json",
              lambda d: (d / "densities" / "extra.json").write_text("{}")),
    "removed": ("calibration.safetensors", "listed in digests.json but missing",
                lambda d: (d / "calibration.safetensors").unlink()),
    "manifest": ("digests.json", "missing, so the bundle's files cannot be verified.*seal_directory",
                 lambda d: (d / "digests.json").unlink()),
}


@pytest.mark.parametrize("edit", sorted(BUNDLE_EDITS))
def test_bundle_refuses_any_edit_after_fitting(tiny_bundle, tmp_path, edit):
    import shutil

    name, reason, apply = BUNDLE_EDITS[edit]
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    digest = bundle_digest(copy)
    assert digest == bundle_digest(tiny_bundle) and len(digest) == 64
    DetectorBundle.load(copy)
    apply(copy)
    for load in (DetectorBundle.load, bundle_digest):
        with pytest.raises(BundleError, match=reason) as info:
            load(copy)
        assert str(info.value).startswith(str(copy / name) + ":") and "\n" not in str(info.value)
    DetectorBundle.load(tiny_bundle)  # the untouched original still loads


def test_bundle_model_reference_covers_model_json(tiny_bundle, tiny_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    bundle = DetectorBundle.load(tiny_bundle)
    bundle.model_ref = dict(bundle.model_ref, path=str(model))
    assert bundle.resolve_model(tiny_bundle) == model
    _edit_json(model / "model.json", lambda m: m["preprocessing"].update(std=[0.5, 0.5, 0.5]))
    with pytest.raises(BundleError, match=r"model\.json: SHA-256 mismatch with the bundle's model reference"):
        bundle.resolve_model(tiny_bundle)


def test_fit_cli_reports_a_bad_dataset(tiny_model, tmp_path, capsys):
    assert main(["fit", "--model", str(tiny_model), "--data", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "ucfTrainTestlist" in capsys.readouterr().err


def test_fit_cli_calibrates_on_videos_the_model_never_saw(tiny_dataset, tiny_model, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    synthesize(fresh, videos_per_class=3, seed=4, width=56, height=32, num_frames=24, classes=CLASSES,
               novel_classes=(), progress=False)
    out = tmp_path / "bundle"
    args = ["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out),
            "--layers", "layer3", "fc", "--no-progress", "--false-alarm", "0.1"]
    assert main([*args, "--calibration-data", str(fresh)]) == 0
    settings = DetectorBundle.load(out).settings
    training_videos = len(UCF101(tiny_dataset, split=1, subset="train").samples)
    clips_per_video = settings["train_clips"] / training_videos
    assert clips_per_video == int(clips_per_video) >= 1  # every training video went to the densities
    assert settings["calibration_clips"] == 3 * len(CLASSES) * clips_per_video
    assert settings["calibration_data"] == str(fresh.resolve())
    assert "shrinkage toward the pooled covariance" in capsys.readouterr().out
    assert main([*args, "--calibration-data", str(tiny_dataset)]) == 2
    assert "overlap the training videos" in capsys.readouterr().err
    other = tmp_path / "other"
    synthesize(other, videos_per_class=2, seed=4, width=56, height=32, num_frames=24, classes=["Grow", "Shrink"],
               novel_classes=(), progress=False)
    assert main([*args, "--calibration-data", str(other)]) == 2
    assert "differ from the training data's" in capsys.readouterr().err


def test_conformal_p_values_and_false_alarm_rate():
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=4000)
    np.testing.assert_allclose(conformal_p_values(np.sort(calibration), [-100, 100]), [1 / 4001, 1.0])
    cal = Calibration.fit({"l/sep": calibration}, np.full(4000, 0.9), ["l/sep"], alpha=0.05)
    fresh = rng.normal(size=20000)
    _, p, results = cal.verdicts({"l/sep": fresh}, np.full(20000, 0.9))
    flagged = np.mean([r[0] != "normal" for r in results])
    assert abs(flagged - 0.05) < 0.01
    assert cal.threshold == pytest.approx(np.quantile(calibration, 0.05), abs=0.05)
    _, _, unsure = cal.verdicts({"l/sep": np.array([-10.0])}, np.array([0.2]))
    _, _, confident = cal.verdicts({"l/sep": np.array([-10.0])}, np.array([0.99]))
    assert unsure[0][0] == "novel" and confident[0][0] == "adversarial"


def test_low_level_and_semantic_groups_fuse_to_the_most_unusual_view():
    rng = np.random.default_rng(1)
    calibration = {"layer1/sep": rng.normal(size=4000), "fc/sep": rng.normal(50.0, 10.0, size=4000)}
    cal = Calibration.fit(calibration, np.full(4000, 0.9), ["layer1/sep", "fc/sep"], alpha=0.05,
                          low_level_keys=["layer1/sep"])
    assert cal.groups == {"low-level": ["layer1/sep"], "semantic": ["fc/sep"]}
    fresh = {"layer1/sep": rng.normal(size=20000), "fc/sep": rng.normal(50.0, 10.0, size=20000)}
    _, _, results = cal.verdicts(fresh, np.full(20000, 0.9))
    assert abs(np.mean([r[0] != "normal" for r in results]) - 0.05) < 0.01, "conformal on the fused minimum"
    painted = {"layer1/sep": np.array([-8.0]), "fc/sep": np.array([50.0])}
    unseen = {"layer1/sep": np.array([0.0]), "fc/sep": np.array([-30.0])}
    _, _, tampered = cal.verdicts(painted, np.array([0.2]))
    _, _, novel = cal.verdicts(unseen, np.array([0.2]))
    _, _, fooled = cal.verdicts(unseen, np.array([0.99]))
    assert tampered[0][0] == "adversarial" and "low-level" in " ".join(tampered[0][1])
    assert novel[0][0] == "novel" and "semantic" in novel[0][1][0]
    assert fooled[0][0] == "adversarial"
    with pytest.raises(ValueError, match="must be distinct fused scores"):
        Calibration.fit(calibration, np.full(4000, 0.9), ["fc/sep"], low_level_keys=["layer1/sep"])


def test_an_output_group_flags_clips_no_known_class_fits_as_novel():
    rng = np.random.default_rng(2)
    keys = ["layer1/sep", "fc/sep", "fc/logsumexp"]
    calibration = {key: rng.normal(size=4000) for key in keys}
    cal = Calibration.fit(calibration, np.full(4000, 0.9), keys, alpha=0.05, low_level_keys=["layer1/sep"],
                          output_keys=["fc/logsumexp"])
    assert cal.groups == {"low-level": ["layer1/sep"], "semantic": ["fc/sep"], "output": ["fc/logsumexp"]}
    fresh = {key: rng.normal(size=20000) for key in keys}
    _, _, results = cal.verdicts(fresh, np.full(20000, 0.9))
    assert abs(np.mean([r[0] != "normal" for r in results]) - 0.05) < 0.01, "still conformal with three groups"
    weak = {"layer1/sep": np.array([0.0]), "fc/sep": np.array([0.0]), "fc/logsumexp": np.array([-8.0])}
    _, _, verdicts = cal.verdicts(weak, np.array([0.99]))
    assert verdicts[0][0] == "novel" and "no known class fits" in verdicts[0][1][-1]
    again = Calibration.from_saved(cal.settings(), cal.arrays())
    assert again.groups == cal.groups and again.verdicts(weak, np.array([0.99]))[2] == verdicts


def test_bundles_fuse_the_logits_energy_when_the_head_is_tapped(tiny_bundle):
    from scipy.special import logsumexp

    bundle = DetectorBundle.load(tiny_bundle)
    assert bundle.settings["output_layer"] == "fc" and bundle.output_key == "fc/logsumexp"
    assert bundle.calibration.groups["output"] == ["fc/logsumexp"]
    features = {layer: np.random.default_rng(0).normal(size=(3, bundle.reducers[layer].n_features_in_))
                for layer in bundle.layers}
    scores = bundle.score(features, np.full(3, 0.5))
    np.testing.assert_allclose(scores.loglik["fc/logsumexp"], logsumexp(features["fc"], axis=1))


def test_fit_keeps_a_sealed_run_folders_model_and_refits_in_place(tiny_dataset, tiny_model, tmp_path, capsys):
    import shutil

    from pipeline.detect import Detector

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    seal_directory(run)  # a training run folder carries its own digests.json
    out = tmp_path / "bundle"
    args = ["--data", str(tiny_dataset), "--layers", "layer3", "fc", "--no-progress", "--false-alarm", "0.1"]
    (out / "model").mkdir(parents=True)
    (out / "model" / "notes.txt").write_bytes(b"a user's file")
    assert main(["fit", "--model", str(run), "--out", str(out), *args]) == 2  # a folder no bundle wrote
    assert "which no bundle wrote" in capsys.readouterr().err and (out / "model" / "notes.txt").is_file()
    (out / "model" / "notes.txt").unlink()
    assert main(["fit", "--model", str(run), "--out", str(out), *args]) == 0
    (out / "model" / "stale.bin").write_bytes(b"left from an earlier fit")
    assert main(["fit", "--model", str(run), "--out", str(out), *args]) == 0  # over an earlier bundle
    assert sorted(p.name for p in (out / "model").iterdir()) == ["model.json", "model.safetensors"]
    Detector.load(out)
    assert main(["fit", "--model", str(out / "model"), "--out", str(out), *args]) == 0  # in place
    Detector.load(out)
    for option, value in (("--false-alarm", "0"), ("--false-alarm", "1.5"), ("--calibration-fraction", "2")):
        with pytest.raises(SystemExit) as info:
            main(["fit", "--model", str(run), "--out", str(tmp_path / "x"), *args, option, value])
        assert info.value.code == 2 and "must be in (0, 1)" in capsys.readouterr().err
