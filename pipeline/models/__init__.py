"""Video backbones (C3D, 3D ResNets), their registry, feature taps and pickle-free weights I/O."""

from pipeline.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ModelError": "errors",
    "file_sha256": "io",
    "load_model": "io",
    "resolve_model_dir": "io",
    "save_model": "io",
    "shipped_model_dir": "io",
    "ModelManifest": "manifest",
    "Preprocessing": "manifest",
    "available_models": "registry",
    "build_model": "registry",
    "default_layers": "registry",
    "FeatureTap": "taps",
})

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
