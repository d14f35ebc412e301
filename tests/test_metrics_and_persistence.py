"""OOD metrics against scikit-learn, and pickle-free persistence of reducers and densities."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pipeline import metrics
from pipeline.density import (
    ClassConditionalGMM,
    PCAReducer,
    PersistenceError,
    SeparateGaussian,
    TiedGaussian,
    load,
    save,
)


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    return rng.normal(1.0, 1.0, 700), rng.normal(-0.5, 1.5, 400)


def test_metrics_match_sklearn(scores):
    inside, outside = scores
    y_in = np.r_[np.ones(inside.size), np.zeros(outside.size)]
    s = np.r_[inside, outside]
    result = metrics.ood_metrics(inside, outside)
    assert set(result) == {"auroc", "aupr_in", "aupr_out", "fpr95", "detection_error"}
    assert result["auroc"] == pytest.approx(roc_auc_score(1 - y_in, -s))
    assert result["aupr_in"] == pytest.approx(average_precision_score(y_in, s))
    assert result["aupr_out"] == pytest.approx(average_precision_score(1 - y_in, -s))
    fpr, tpr, _ = roc_curve(y_in, s)
    assert result["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    assert result["detection_error"] == pytest.approx(np.min(0.5 * (1 - tpr) + 0.5 * fpr))


def test_fpr95_is_fraction_of_ood_above_the_95_percent_threshold(scores):
    inside, outside = scores
    threshold = np.sort(inside)[::-1][int(np.ceil(0.95 * inside.size)) - 1]
    assert metrics.fpr_at_tpr(inside, outside) == pytest.approx(np.mean(outside >= threshold))


def test_metric_extremes():
    assert metrics.auroc([5, 6, 7], [1, 2]) == 1.0
    assert metrics.auroc([1, 2], [5, 6, 7]) == 0.0
    assert metrics.fpr_at_tpr([5, 6, 7], [1, 2]) == 0.0
    assert metrics.detection_error([5, 6, 7], [1, 2]) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([1, np.nan], [0])
    with pytest.raises(ValueError, match="need in- and out"):
        metrics.auroc([], [0])


def test_video_means_average_each_videos_clips():
    scores = np.array([1.0, 3.0, -2.0, 10.0, 0.5])
    videos = np.array(["b", "b", "a", "c", "a"])
    expected = sorted(np.mean(scores[videos == v]) for v in set(videos))
    assert sorted(metrics.video_means(scores, videos)) == pytest.approx(expected)  # a: -0.75, b: 2, c: 10
    with pytest.raises(ValueError, match="5 scores but 4 video ids"):
        metrics.video_means(scores, videos[:4])


def test_detection_rows_add_the_video_level_auroc_where_videos_are_known():
    from pipeline.detect import BundleScores, ClipFeatures
    from pipeline.evaluation.report import detection_rows

    rng = np.random.default_rng(1)

    def scored(fused: np.ndarray) -> tuple[BundleScores, ClipFeatures]:
        n = fused.size
        return (BundleScores({"fc/gmm": fused * 2}, fused, np.ones(n), ["normal"] * n, [[]] * n),
                ClipFeatures({"fc": np.zeros((n, 2), np.float32)}, rng.normal(size=(n, 3)), np.zeros(n, int)))

    # per clip, the sets overlap; each video's two clips have opposite noise, so their means separate fully
    noise = rng.normal(0, 3, 20)
    clean_fused, novel_fused = 1.0 + np.r_[noise, -noise], np.r_[noise[:10], -noise[:10]]
    clean_ids, novel_ids = np.tile(np.arange(20), 2), np.tile(np.arange(10), 2)
    sets = {"clean": scored(clean_fused), "novel": scored(novel_fused), "user": scored(novel_fused)}
    rows = detection_rows({k: v[0] for k, v in sets.items()}, {k: v[1] for k, v in sets.items()},
                          videos={"clean": clean_ids, "novel": novel_ids})
    fused = {r["ood_set"]: r for r in rows if r["density"] == "fused"}
    assert fused["novel"]["auroc"] < 0.8 and fused["novel"]["video_auroc"] == 1.0
    assert fused["novel"]["video_auroc"] == metrics.auroc(metrics.video_means(clean_fused, clean_ids),
                                                          metrics.video_means(novel_fused, novel_ids))
    assert all("video_auroc" in r for r in rows if r["ood_set"] == "novel")
    assert not any("video_auroc" in r for r in rows if r["ood_set"] == "user")  # its videos are unknown


def test_class_matched_auroc_sees_through_a_score_that_flags_one_class():
    rng = np.random.default_rng(0)
    in_classes = rng.integers(0, 5, 20000)
    out_classes = np.where(rng.random(6000) < 0.9, 2, rng.integers(0, 5, 6000))  # mostly taken for class 2
    flags_class_2 = lambda classes: rng.normal(0, 1, classes.size) - 2.0 * (classes == 2)  # noqa: E731
    inside, outside = flags_class_2(in_classes), flags_class_2(out_classes)
    assert metrics.auroc(inside, outside) > 0.75
    assert metrics.class_matched_auroc(inside, outside, in_classes, out_classes) == pytest.approx(0.5, abs=0.02)
    shifted = outside - 1.5  # a real shift within every class survives the matching
    assert metrics.class_matched_auroc(inside, shifted, in_classes, out_classes) > 0.8
    # one class on both sides: nothing to reweigh; the plain AUROC
    same = np.zeros(700, int)
    assert metrics.class_matched_auroc(inside[:700], outside[:400], same, same[:400]) == \
        pytest.approx(metrics.auroc(inside[:700], outside[:400]))
    # brute force over the pairs on a small case: weight n_out(c) / n_in(c) per clean sample
    a, b, ca, cb = rng.normal(size=9), rng.normal(size=6), rng.integers(0, 3, 9), rng.integers(0, 3, 6)
    w = {c: np.sum(cb == c) / max(np.sum(ca == c), 1) for c in range(3)}
    keep = np.isin(cb, ca)
    pairs = [(w[ci] * ((x > y) + 0.5 * (x == y))) for x, ci in zip(a, ca, strict=True) for y, k in zip(b, keep, strict=True) if k]
    total = sum(w[ci] for ci in ca) * keep.sum()
    assert metrics.class_matched_auroc(a, b, ca, cb) == pytest.approx(sum(pairs) / total)
    assert np.isnan(metrics.class_matched_auroc([1.0, 2.0], [0.0], [0, 0], [1]))  # no OOD class to match
    with pytest.raises(ValueError, match="2 and 2 classes for 2 and 1 scores"):
        metrics.class_matched_auroc([1.0, 2.0], [0.0], [0, 0], [1, 1])


def test_detection_rows_match_the_predicted_classes():
    from pipeline.detect import BundleScores, ClipFeatures
    from pipeline.evaluation.report import detection_rows

    def scored(predicted: np.ndarray) -> tuple[BundleScores, ClipFeatures]:
        n = predicted.size
        fused = np.where(predicted == 1, -1.0, 1.0)  # flags whatever is taken for class 1
        logits = np.eye(2)[predicted]
        return (BundleScores({"fc/gmm": fused}, fused, np.ones(n), ["normal"] * n, [[]] * n),
                ClipFeatures({"fc": logits.astype(np.float32)}, logits, np.zeros(n, int)))

    sets = {"clean": scored(np.r_[np.zeros(30, int), np.ones(10, int)]), "novel": scored(np.ones(20, int)),
            "attacked": scored(np.zeros(20, int))}
    rows = detection_rows({k: v[0] for k, v in sets.items()}, {k: v[1] for k, v in sets.items()})
    fused = {r["ood_set"]: r for r in rows if r["density"] == "fused"}
    assert fused["novel"]["auroc"] == pytest.approx(0.875)  # 30 of 40 clean clips outrank every novel clip
    assert fused["novel"]["class_matched_auroc"] == pytest.approx(0.5)
    assert fused["attacked"]["class_matched_auroc"] == pytest.approx(0.5)


def test_likelihood_accuracy():
    ll = np.array([[0.0, -1.0], [-3.0, -2.0], [-1.0, -5.0]])
    assert metrics.likelihood_accuracy(ll, np.array(["a", "b", "b"]), classes=["a", "b"]) == pytest.approx(2 / 3)


def fitted_estimators():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(240, 6, 2, 4, 4)) + np.repeat(np.arange(3), 80)[:, None, None, None, None]
    y = np.repeat(np.array(["a", "b", "c"]), 80)
    reducer = PCAReducer(variance=0.99).fit(maps)
    Z = reducer.transform(maps)
    return maps, y, {
        "layer3/reducer": reducer,
        "layer3/tied": TiedGaussian().fit(Z, y),
        "layer3/sep": SeparateGaussian(scoring_dtype="float64").fit(Z, y),
        "layer3/gmm": ClassConditionalGMM(max_components=2).fit(Z, y),
    }


def test_save_load_roundtrip_scores_identically(tmp_path):
    maps, y, estimators = fitted_estimators()
    save(tmp_path, estimators, metadata={"layer": "layer3"})
    assert not list(tmp_path.glob("*.pkl"))
    loaded = load(tmp_path)
    assert set(loaded) == set(estimators)
    Z = loaded["layer3/reducer"].transform(maps)
    np.testing.assert_array_equal(Z, estimators["layer3/reducer"].transform(maps))
    for name in ("layer3/tied", "layer3/sep", "layer3/gmm"):
        np.testing.assert_array_equal(loaded[name].class_log_likelihood(Z), estimators[name].class_log_likelihood(Z))
        np.testing.assert_array_equal(loaded[name].classes_, estimators[name].classes_)
        assert loaded[name].get_params() == estimators[name].get_params()
    for name in ("layer3/sep", "layer3/gmm"):
        assert loaded[name].shrinkage_ == estimators[name].shrinkage_
        assert loaded[name].shrinkage_scores_ == estimators[name].shrinkage_scores_
    # Covariances are not stored (their precision factors are): they come back recomputed, to rounding.
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert not [key for key in manifest["arrays"] if key.endswith(("/covariance_", "/covariances_"))]
    np.testing.assert_allclose(loaded["layer3/tied"].covariance_, estimators["layer3/tied"].covariance_, rtol=1e-8,
                               atol=1e-12)
    for name in ("layer3/sep", "layer3/gmm"):
        np.testing.assert_allclose(loaded[name].covariances_, estimators[name].covariances_, rtol=1e-8, atol=1e-12)
    assert [r.to_dict() for r in loaded["layer3/sep"].fit_report_] == [
        r.to_dict() for r in estimators["layer3/sep"].fit_report_
    ]


def test_manifest_is_strict_json_and_densities_saved_before_shrinkage_load_as_unshrunk(tmp_path):
    base = np.random.default_rng(2).normal(size=(300, 4))
    X, y = np.hstack([base, base[:, :1]]), np.repeat([0, 1, 2], 100)  # a repeated feature: every fold singular
    sep = SeparateGaussian().fit(X, y)
    assert sep.shrinkage_ == 0.0 and sep.shrinkage_scores_ == [None] * len(sep.shrinkage_scores_)
    assert all(record.jitter > 0 for record in sep.fit_report_)
    save(tmp_path, {"sep": sep})
    text = (tmp_path / "manifest.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"manifest holds {name}"))
    manifest = json.loads(text)
    for key in ("shrinkage", "cv_folds"):
        del manifest["estimators"]["sep"]["params"][key]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert load(tmp_path)["sep"].get_params()["shrinkage"] == 0.0


def test_load_rejects_other_version(tmp_path):
    save(tmp_path, fitted_estimators()[2])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PersistenceError, match="format version 99 is not supported"):
        load(tmp_path)


def test_load_rejects_missing_and_tampered_arrays(tmp_path):
    save(tmp_path, fitted_estimators()[2])
    original = load_file(str(tmp_path / "arrays.safetensors"))
    arrays = dict(original, **{"layer3/sep/means_": original["layer3/sep/means_"] + 1e-9})
    save_file(arrays, str(tmp_path / "arrays.safetensors"))
    with pytest.raises(PersistenceError, match="'layer3/sep/means_' does not match its SHA-256"):
        load(tmp_path)
    arrays = dict(original)
    del arrays["layer3/gmm/weights_"]
    save_file(arrays, str(tmp_path / "arrays.safetensors"))
    with pytest.raises(PersistenceError, match="'layer3/gmm/weights_' is missing"):
        load(tmp_path)
    (tmp_path / "arrays.safetensors").write_bytes(b"garbage")
    with pytest.raises(PersistenceError, match="cannot read arrays"):
        load(tmp_path)


def test_load_errors_on_missing_directory_and_unknown_type(tmp_path):
    with pytest.raises(PersistenceError, match="no manifest"):
        load(tmp_path / "nowhere")
    save(tmp_path, {"r": fitted_estimators()[2]["layer3/reducer"]})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["estimators"]["r"]["type"] = "os.system"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PersistenceError, match="unknown type 'os.system'"):
        load(tmp_path)


def test_saving_unfitted_estimator_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        save(tmp_path, {"sep": SeparateGaussian()})
