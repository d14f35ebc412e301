"""Detection: layer features of clips, detector bundles (reducers + densities + calibration), verdicts."""

from pipeline.detect.bundle import BundleError, BundleScores, DetectorBundle, bundle_digest
from pipeline.detect.calibration import Calibration
from pipeline.detect.detector import Detector, DetectorSettings
from pipeline.detect.features import ClipFeatures, extract_video_features, load_clips, model_input

__all__ = [
    "BundleError",
    "BundleScores",
    "Calibration",
    "ClipFeatures",
    "Detector",
    "DetectorBundle",
    "DetectorSettings",
    "bundle_digest",
    "extract_video_features",
    "load_clips",
    "model_input",
]
