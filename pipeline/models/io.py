"""Weights I/O without pickle: ``model.safetensors`` + ``model.json`` directories, shipped models, checkpoints.

A saved model is a directory holding the weights and a manifest (architecture, options, classes,
preprocessing, sha256 of the weights). :func:`load_model` verifies the digest, format version and keys before
it returns a model, and a directory's ``digests.json`` (``pipeline.fileio.seal_directory``: every file, the
manifest included) whenever there is one; shipped models must carry one. :func:`load_state_dict_file` reads
third-party checkpoints (``.safetensors``, or ``.pth`` through ``torch.load(weights_only=True)``, including Hara
et al.'s ``{"state_dict": …, "arch": …}`` format).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import pipeline
from pipeline.fileio import DIGESTS_FILE, IntegrityError, atomic_write, file_sha256, verify_directory
from pipeline.models.errors import ModelNotFoundError, WeightsError
from pipeline.models.manifest import MANIFEST_FILE, WEIGHTS_FILE, ModelManifest, build_manifest, read_manifest
from pipeline.models.registry import build_model

SHIPPED_MODELS = ("default", "default-surrogate", "base")
CHECKPOINT_STATE_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."


def shipped_model_dir(name: str) -> Path:
    """Directory of a model shipped with clipwatch (``pipeline/assets/models/<name>``)."""
    return Path(pipeline.__file__).resolve().parent / "assets" / "models" / name


def save_model(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    architecture: str,
    options: Mapping[str, Any],
    num_classes: int,
    class_names: Sequence[str],
    preprocessing: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> ModelManifest:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (created if needed); return the manifest.

    ``model`` must be ``build_model(architecture, num_classes, **options)`` in keys and shapes, so that
    :func:`load_model` can rebuild it; ``extra`` holds free-form JSON such as training information.
    """
    directory = Path(directory)
    fields = {
        "architecture": architecture,
        "options": dict(options),
        "num_classes": num_classes,
        "class_names": tuple(class_names),
        "preprocessing": dict(preprocessing),
        "sha256": "0" * 64,
        "extra": dict(extra or {}),
    }
    build_manifest(**fields)
    reference = _build_on_meta(architecture, num_classes, options, source=directory)
    state = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    check_state_dict(reference, state, source=f"{directory}: model given as {architecture!r}")
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS_FILE
    atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    manifest = build_manifest(**{**fields, "sha256": file_sha256(weights_path)})
    text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    atomic_write(directory / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return manifest


def load_model(
    path_or_name: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelManifest]:
    """Load a saved model directory (or its ``model.json``), or a shipped model by name; returns it in eval mode.

    ``"default"`` and ``"default-surrogate"`` name the models under ``pipeline/assets/models/``. Raises
    :class:`ModelNotFoundError` when nothing is there and :class:`WeightsError` on a digest mismatch, an unknown
    format version or weights that do not fit the architecture.
    """
    directory = resolve_model_dir(path_or_name)
    manifest = read_manifest(directory / MANIFEST_FILE)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelNotFoundError(f"{weights_path}: weights file missing next to {MANIFEST_FILE}")
    digest = file_sha256(weights_path)
    if digest != manifest.sha256:
        raise WeightsError(
            f"{weights_path}: sha256 mismatch (manifest {manifest.sha256[:16]}…, file {digest[:16]}…): "
            "the weights were modified or corrupted"
        )
    # Fresh, allocator-aligned copies: tensors viewing the file buffer can take other (last-bit different) kernels.
    state = {key: value.clone() for key, value in _read_safetensors(weights_path, device=str(map_location)).items()}
    model = _build_on_meta(manifest.architecture, manifest.num_classes, manifest.options, source=directory)
    check_state_dict(model, state, source=str(weights_path))
    model.load_state_dict(state, assign=True)
    leftover = [name for name, tensor in _tensors(model) if tensor.is_meta]
    if leftover:
        raise WeightsError(f"{weights_path}: tensors not stored in the file: {', '.join(leftover[:5])}")
    return model.eval(), manifest


def resolve_model_dir(path_or_name: str | os.PathLike[str]) -> Path:
    """Directory holding ``model.json`` for a path (directory or manifest file) or a shipped model name.

    Verifies the directory's ``digests.json`` when it has one, and always for shipped models, so an edited
    ``model.json`` (preprocessing, classes) is refused like edited weights.
    """
    if isinstance(path_or_name, str) and path_or_name in SHIPPED_MODELS:
        directory = shipped_model_dir(path_or_name)
        if not (directory / MANIFEST_FILE).is_file():
            raise ModelNotFoundError(
                f"shipped model {path_or_name!r} not found at {directory} "
                "(train one, save it there with save_model and seal it with pipeline.fileio.seal_directory)"
            )
        _verify_sealed(directory, required=True)
        return directory
    path = Path(path_or_name)
    directory = path.parent if path.is_file() and path.suffix == ".json" else path
    if not (directory / MANIFEST_FILE).is_file():
        raise ModelNotFoundError(
            f"{path}: no saved model here (expected a directory with {MANIFEST_FILE} and {WEIGHTS_FILE}; "
            f"shipped names: {', '.join(SHIPPED_MODELS)})"
        )
    _verify_sealed(directory, required=directory.resolve().parent == shipped_model_dir("default").resolve().parent)
    return directory


def _verify_sealed(directory: Path, *, required: bool) -> None:
    if required or (directory / DIGESTS_FILE).is_file():
        try:
            verify_directory(directory, what="model directory")
        except IntegrityError as exc:
            raise WeightsError(str(exc)) from None


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or from a ``torch.save`` checkpoint with ``weights_only=True``.

    Checkpoints wrapping the weights as ``{"state_dict": …}`` (Hara et al.) or ``{"model": …}`` are unwrapped,
    and DataParallel's ``module.`` prefixes are stripped, so published 3D-ResNet checkpoints load into
    ``build_model("r3d-<depth>", num_classes)``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, device="cpu")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: refused by torch.load(weights_only=True): {reason}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(checkpoint, Mapping):
        for key in CHECKPOINT_STATE_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(checkpoint).__name__}")
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{path}: entries that are not tensors: {', '.join(map(str, not_tensors[:5]))}")
    return {_strip_prefix(str(key)): value for key, value in checkpoint.items()}


def load_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """Load a state dict (or a file read by :func:`load_state_dict_file`) into ``model``, strictly.

    Keys starting with a prefix in ``exclude`` are ignored on both sides (e.g. ``exclude=["fc."]`` to fine-tune
    a Kinetics checkpoint on other classes). Mismatched keys or shapes raise a one-line :class:`WeightsError`.
    """
    label = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = load_state_dict_file(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    kept = {key: value for key, value in state.items() if not key.startswith(tuple(exclude))}
    check_state_dict(model, kept, source=label, exclude=exclude)
    model.load_state_dict(kept, strict=False)
    return model


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, exclude: Sequence[str] = ()
) -> None:
    """Raise a one-line :class:`WeightsError` unless ``state`` has exactly ``model``'s keys and shapes."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(exclude))}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:4])}{', …' if len(items) > 4 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
        if items
    ]
    if problems:
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__}: {'; '.join(problems)}")


def _build_on_meta(architecture: str, num_classes: int, options: Mapping[str, Any], *, source: Path) -> nn.Module:
    try:
        with torch.device("meta"):
            return build_model(architecture, num_classes, **dict(options))
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{source}: cannot build {architecture!r}: {exc}") from None


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def _strip_prefix(key: str) -> str:
    return key[len(DATA_PARALLEL_PREFIX) :] if key.startswith(DATA_PARALLEL_PREFIX) else key


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()
