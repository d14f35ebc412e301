"""Detection: layer features of clips, detector bundles (reducers + densities + calibration), verdicts."""

from pipeline.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "BundleError": "bundle",
    "BundleScores": "bundle",
    "DetectorBundle": "bundle",
    "bundle_digest": "bundle",
    "Calibration": "calibration",
    "Detector": "detector",
    "DetectorSettings": "detector",
    "ClipFeatures": "features",
    "extract_video_features": "features",
    "load_clips": "features",
    "model_input": "features",
})

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
