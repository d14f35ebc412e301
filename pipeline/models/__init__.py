"""Video backbones (C3D, 3D ResNets), their registry, feature taps and pickle-free weights I/O."""

from pipeline.models.c3d import C3D
from pipeline.models.errors import (
    InputShapeError,
    ModelError,
    ModelNotFoundError,
    UnknownLayerError,
    UnknownModelError,
    WeightsError,
)
from pipeline.models.io import (
    SHIPPED_MODELS,
    file_sha256,
    load_model,
    load_state_dict_file,
    load_weights,
    resolve_model_dir,
    save_model,
    shipped_model_dir,
)
from pipeline.models.manifest import ModelManifest, Preprocessing
from pipeline.models.registry import available_models, build_model, default_layers
from pipeline.models.resnet3d import ResNet3D
from pipeline.models.taps import FeatureTap, layer_names

__all__ = [
    "C3D",
    "SHIPPED_MODELS",
    "FeatureTap",
    "InputShapeError",
    "ModelError",
    "ModelManifest",
    "ModelNotFoundError",
    "Preprocessing",
    "ResNet3D",
    "UnknownLayerError",
    "UnknownModelError",
    "WeightsError",
    "available_models",
    "build_model",
    "default_layers",
    "file_sha256",
    "layer_names",
    "load_model",
    "load_state_dict_file",
    "load_weights",
    "resolve_model_dir",
    "save_model",
    "shipped_model_dir",
]
