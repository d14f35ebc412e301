"""The shipped bundle and adversarial frame belong to the shipped default model (what the demo relies on)."""

from pipeline.attacks import AdversarialFrame
from pipeline.demo import DEFAULT_BUNDLE, DEFAULT_FRAME
from pipeline.detect import DetectorBundle
from pipeline.models import load_model, shipped_model_dir


def test_default_bundle_matches_the_default_model():
    bundle = DetectorBundle.load(DEFAULT_BUNDLE)
    assert bundle.resolve_model(DEFAULT_BUNDLE) == shipped_model_dir("default")
    _, manifest = load_model("default")
    assert bundle.class_names == list(manifest.class_names)
    assert bundle.calibration.alpha == 0.01
    assert bundle.calibration.groups == {"low-level": ["layer2/sep", "layer3/sep"], "semantic": ["avgpool/sep", "fc/sep"],
                                         "output": ["fc/logsumexp"], "border": ["border/consistency"]}
    assert bundle.border == 4  # 5 % of the 80-pixel input, wider than the 3-pixel frame of the demo's attacker
    # Two low-level layers of ~140 PCA dimensions: one precision factor per class and density (covariances are
    # recomputed on load).
    assert sum(p.stat().st_size for p in DEFAULT_BUNDLE.rglob("*") if p.is_file()) <= 10 * 2**20


def test_default_frame_fits_the_default_model_input():
    frame = AdversarialFrame.load(DEFAULT_FRAME)
    _, manifest = load_model("default")
    assert frame.pixels.shape[-2:] == (manifest.preprocessing.crop, manifest.preprocessing.crop)
    assert frame.pixels.min() >= 0 and frame.pixels.max() <= 1
