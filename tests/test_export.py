"""ONNX export: the exported graph scores real clips like torch, and the export folder refuses what it should."""

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.data import UCF101
from pipeline.demo import DEFAULT_BUNDLE
from pipeline.detect import Detector, bundle_digest
from pipeline.export import ExportError, OnnxDetector, export_bundle, read_export
from pipeline.export.exporter import relative_difference
from pipeline.video import ClipSplitter, iter_file_clips


@pytest.fixture(scope="module")
def tiny_export(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    export_bundle(tiny_bundle, out)
    return out


def video_clips(dataset_root, clip_len):
    """Every ``clip_len``-frame window (frames at their stored size) of the test videos, novel activities included,
    and three clips of noise (flagged)."""
    samples = UCF101(dataset_root, split=1, subset="test").samples
    samples += UCF101(dataset_root / "novel", split=1, subset="test").samples
    splitter = ClipSplitter(clip_len, clip_len, 1)
    clips = [clip.frames for sample in samples for clip in iter_file_clips(sample.path, splitter)]
    noise = np.random.default_rng(0).integers(0, 256, (3, clip_len, 60, 80, 3), dtype=np.uint8)  # another size
    return clips + list(noise)


def assert_scores_match(onnx_detector, detector, clips):
    ort_features, ort_scores = onnx_detector.score_clips(clips, batch_size=8)
    features, scores = detector.score_clips(clips, batch_size=8)
    assert relative_difference(ort_features.logits, features.logits) < 1e-3
    for layer in detector.layers:
        assert relative_difference(ort_features.layers[layer], features.layers[layer]) < 1e-3
    assert ort_scores.verdicts == scores.verdicts and ort_scores.reasons == scores.reasons
    np.testing.assert_allclose(ort_scores.fused, scores.fused, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ort_scores.p_value, scores.p_value, rtol=0, atol=1e-3)
    assert set(ort_scores.loglik) == set(scores.loglik)
    for key, values in scores.loglik.items():
        np.testing.assert_allclose(ort_scores.loglik[key], values, rtol=1e-3, atol=1e-3, err_msg=key)
    return scores


def test_export_writes_a_sealed_self_contained_folder(tiny_export, tiny_bundle):
    manifest = read_export(tiny_export)
    assert sorted(p.name for p in tiny_export.iterdir()) == ["bundle", "digests.json", "export.json", "model.onnx"]
    assert manifest["bundle"]["digest"] == bundle_digest(tiny_bundle) == bundle_digest(tiny_export / "bundle")
    assert manifest["input"]["shape"] == ["batch", 3, 8, 32, 32] and manifest["pool_factor"] == 4
    assert [(entry["layer"], entry["name"]) for entry in manifest["outputs"]["features"]] == [
        ("layer3", "features.layer3"), ("layer4", "features.layer4"), ("fc", "features.fc")]
    assert max(manifest["verification"]["max_relative_difference"].values()) < 1e-3


def test_onnx_runtime_scores_real_clips_like_torch(tiny_export, tiny_bundle, tiny_dataset):
    # the tiny bundle has 9 calibration clips: at a false-alarm rate of 0.5 both verdicts occur
    onnx_detector = OnnxDetector.load(tiny_export, alpha=0.5)
    detector = Detector.load(tiny_bundle, alpha=0.5)
    assert onnx_detector.alpha == 0.5 and onnx_detector.layers == detector.layers and onnx_detector.class_names == detector.class_names
    clips = video_clips(tiny_dataset, onnx_detector.preprocessing.clip_len)
    assert len(clips) >= 24
    scores = assert_scores_match(onnx_detector, detector, clips)
    assert len(set(scores.verdicts)) > 1
    with pytest.raises(ExportError, match="the exported model takes"):
        onnx_detector.features([clip[:4] for clip in clips[:2]])  # 4 frames where the model takes 8


def test_shipped_bundle_exports_and_scores_like_torch(tiny_dataset, tmp_path):
    manifest = export_bundle(DEFAULT_BUNDLE, tmp_path / "default")
    assert [entry["layer"] for entry in manifest["outputs"]["features"]] == ["layer2", "layer3", "avgpool", "fc"]
    onnx_detector = OnnxDetector.load(tmp_path / "default")
    detector = Detector.load(DEFAULT_BUNDLE)
    scores = assert_scores_match(onnx_detector, detector, video_clips(tiny_dataset, onnx_detector.preprocessing.clip_len))
    assert len(set(scores.verdicts)) > 1


def test_cli_refuses_a_non_empty_out_without_overwrite(tiny_bundle, tiny_export, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = ["export", "--bundle", str(tiny_bundle), "--out", str(out), "--check-clips", "2"]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("clipwatch export: error:") and "--overwrite" in error
    assert main([*command, "--overwrite"]) == 2  # only an earlier export's files are replaced
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"

    (out / "notes.txt").unlink()
    assert main(command) == 0 and "largest relative difference" in capsys.readouterr().out
    first = (out / "export.json").read_text()
    assert main(command) == 2
    assert main([*command, "--overwrite"]) == 0
    assert (out / "export.json").read_text() == first and OnnxDetector.load(out).layers == ["layer3", "layer4", "fc"]


def test_a_tampered_export_is_refused(tiny_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    with pytest.raises(ExportError, match="model.onnx: SHA-256 does not match export.json"):
        OnnxDetector.load(copy)

    shutil.rmtree(copy)
    shutil.copytree(tiny_export, copy)
    manifest = json.loads((copy / "export.json").read_text())
    manifest["pool_factor"] = 2
    (copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="export.json: SHA-256 mismatch"):
        OnnxDetector.load(copy)


def test_an_export_that_disagrees_with_torch_is_refused_and_leaves_nothing(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.export.exporter.relative_difference", lambda actual, expected: 0.01)
    out = tmp_path / "off"
    with pytest.raises(ExportError, match="disagree on 'logits' by 0.01 .* export refused"):
        export_bundle(tiny_bundle, out, check_clips=2)
    assert not out.exists() and not list(tmp_path.iterdir())
