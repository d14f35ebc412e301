"""Detector: a bundle and its model loaded together, typed settings, scoring clips, alpha overrides without mutation."""

import numpy as np
import pytest

from pipeline.demo import DEFAULT_BUNDLE
from pipeline.detect import BundleError, Detector, DetectorBundle, DetectorSettings
from pipeline.models import load_model


@pytest.fixture(scope="module")
def detector():
    return Detector.load(DEFAULT_BUNDLE)


def clips(prep, seed=0):
    """Three clips of the model's length, two frame sizes (one already at crop size)."""
    rng = np.random.default_rng(seed)
    sizes = [(60, 80), (prep.crop, prep.crop), (60, 80)]
    return [rng.integers(0, 256, (prep.clip_len, h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_load_checks_and_types_the_shipped_bundle(detector):
    _, manifest = load_model("default")
    assert detector.manifest == manifest and not detector.model.training
    assert detector.model_id == f"{manifest.architecture}@{manifest.sha256[:12]}"
    assert detector.settings.pool_factor == 4 and detector.settings.fused_density == "sep"
    assert detector.settings.low_level_layers == ("layer2", "layer3")
    assert detector.alpha == detector.bundle.calibration.alpha == 0.01
    assert Detector.preprocessing(DEFAULT_BUNDLE) == manifest.preprocessing


def test_score_clips_matches_scoring_the_features(detector):
    batch = clips(detector.manifest.preprocessing)
    features, scores = detector.score_clips(batch)
    assert set(features.layers) == set(detector.layers) and features.logits.shape == (3, len(detector.class_names))
    assert len(scores.verdicts) == 3 and np.all((scores.p_value > 0) & (scores.p_value <= 1))
    again = detector.bundle.score(features.layers, features.softmax.max(axis=1), evidence=features.evidence)
    np.testing.assert_array_equal(scores.fused, again.fused)
    assert scores.verdicts == again.verdicts
    one_by_one = detector.features(batch, batch_size=1)
    np.testing.assert_allclose(one_by_one.logits, features.logits, rtol=1e-4, atol=1e-4)


def test_alpha_override_leaves_the_bundle_as_loaded(detector):
    lenient = Detector.load(DEFAULT_BUNDLE, alpha=0.9)
    assert lenient.alpha == 0.9 and lenient.bundle.calibration.alpha == 0.01
    assert DetectorBundle.load(DEFAULT_BUNDLE).calibration.alpha == 0.01
    features = detector.features(clips(detector.manifest.preprocessing, seed=1))
    strict = detector.score_features(features.layers, features.softmax, evidence=features.evidence)
    loose = lenient.score_features(features.layers, features.softmax, evidence=features.evidence)
    np.testing.assert_array_equal(strict.p_value, loose.p_value)
    assert np.sum(np.array(loose.verdicts) != "normal") >= np.sum(np.array(strict.verdicts) != "normal")
    assert all((p > 0.9) == (v == "normal") for p, v in zip(loose.p_value, loose.verdicts, strict=True))
    assert lenient.bundle.calibration.alpha == 0.01
    with pytest.raises(ValueError, match="false-alarm rate"):
        Detector.load(DEFAULT_BUNDLE, alpha=1.5)


def test_settings_tolerate_bundles_without_provenance():
    fitted = {"densities": ["sep"], "fused_density": "sep", "variance": 0.99, "pool_factor": 2, "false_alarm": 0.05,
              "seed": 1, "train_clips": 10, "calibration_clips": 5}
    settings = DetectorSettings.from_mapping(fitted)
    assert settings.dataset is settings.split is settings.calibration_data is None
    assert settings.low_level_layers == () and settings.densities == ("sep",)
    with pytest.raises(BundleError, match="'variance'"):
        DetectorSettings.from_mapping({k: v for k, v in fitted.items() if k != "variance"})


def test_fit_records_provenance_in_the_bundle(tiny_bundle, tiny_dataset):
    settings = DetectorSettings.from_mapping(DetectorBundle.load(tiny_bundle).settings)
    assert settings.dataset == str(tiny_dataset.resolve()) and settings.split == 1
    assert settings.calibration_data is None and settings.train_clips > 0


def test_a_bundle_that_could_never_flag_is_refused():
    """Conformal p-values are at least 1/(n+1): 50 calibration clips cannot reach a 1 % false-alarm rate."""
    from pipeline.detect import ClipFeatures

    rng = np.random.default_rng(0)

    def clips(n):
        return ClipFeatures({"fc": rng.normal(size=(n, 4))}, rng.normal(size=(n, 2)), rng.integers(0, 2, n),
                            seqs=np.arange(n))

    with pytest.raises(BundleError, match=r"50 calibration clips cannot flag .* at least 99 calibration clips"):
        DetectorBundle.fit(clips(60), clips(50), model_ref={}, class_names=["a", "b"], densities=("sep",),
                           fused_density="sep", false_alarm=0.01, progress=False)
    bundle = DetectorBundle.fit(clips(60), clips(50), model_ref={}, class_names=["a", "b"], densities=("sep",),
                                fused_density="sep", false_alarm=0.05, progress=False)
    assert bundle.calibration.alpha == 0.05
