"""Detection: layer features of clips, detector bundles (reducers + densities + calibration), verdicts."""

from pipeline.detect.bundle import BundleError, BundleScores, DetectorBundle, bundle_digest
from pipeline.detect.calibration import ADVERSARIAL, NORMAL, NOVEL, Calibration, conformal_p_values
from pipeline.detect.detector import Detector, DetectorSettings, model_id
from pipeline.detect.features import (
    ClipFeatures,
    extract_clip_features,
    extract_from_tensors,
    extract_video_features,
    load_clips,
    model_input,
    pixel_input,
)

__all__ = [
    "ADVERSARIAL",
    "NORMAL",
    "NOVEL",
    "BundleError",
    "BundleScores",
    "Calibration",
    "ClipFeatures",
    "Detector",
    "DetectorBundle",
    "DetectorSettings",
    "bundle_digest",
    "conformal_p_values",
    "extract_clip_features",
    "extract_from_tensors",
    "extract_video_features",
    "load_clips",
    "model_id",
    "model_input",
    "pixel_input",
]
