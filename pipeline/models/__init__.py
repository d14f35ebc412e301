"""Video backbones (C3D, 3D ResNets), their registry, feature taps and pickle-free weights I/O."""

from pipeline.models.errors import ModelError
from pipeline.models.io import file_sha256, load_model, resolve_model_dir, save_model, shipped_model_dir
from pipeline.models.manifest import ModelManifest, Preprocessing
from pipeline.models.registry import available_models, build_model, default_layers
from pipeline.models.taps import FeatureTap

__all__ = [
    "FeatureTap",
    "ModelError",
    "ModelManifest",
    "Preprocessing",
    "available_models",
    "build_model",
    "default_layers",
    "file_sha256",
    "load_model",
    "resolve_model_dir",
    "save_model",
    "shipped_model_dir",
]
