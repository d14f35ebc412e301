"""Save and load fitted reducers and densities without pickle: safetensors arrays + a JSON manifest.

A directory holds any number of named estimators (e.g. ``layer3/reducer``, ``layer3/sep``)::

    manifest.json       format name and version, each estimator's class, parameters and scalar
                        attributes, and the SHA-256 of every array
    arrays.safetensors  the fitted arrays, keyed ``<name>/<attribute>``

Loading checks the format version, that every array is present with its recorded digest, and only
instantiates the estimator classes listed in ``ESTIMATOR_TYPES``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from pipeline.density.covariance import CovarianceFit
from pipeline.density.gaussian import SeparateGaussian, TiedGaussian
from pipeline.density.gmm import ClassConditionalGMM
from pipeline.density.reduce import PCAReducer
from pipeline.errors import ClipwatchError

FORMAT = "clipwatch.density"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.safetensors"
ESTIMATOR_TYPES = {cls.__name__: cls for cls in (PCAReducer, TiedGaussian, SeparateGaussian, ClassConditionalGMM)}
_SCALARS = ("n_features_in_", "n_components_")
_JSON_ATTRIBUTES = ("shrinkage_", "shrinkage_scores_")


class PersistenceError(ClipwatchError, ValueError):
    """A saved directory is missing, of another format version, incomplete or tampered with."""


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _describe(name: str, estimator, arrays: dict[str, np.ndarray]) -> dict:
    kind = type(estimator).__name__
    if kind not in ESTIMATOR_TYPES:
        raise TypeError(f"cannot save {kind}: supported types are {sorted(ESTIMATOR_TYPES)}")
    if not hasattr(estimator, estimator._array_attributes[0]):
        raise ValueError(f"cannot save {name!r}: {kind} is not fitted")
    entry: dict = {"type": kind, "params": estimator.get_params(), "attributes": {}}
    derived = getattr(estimator, "_derived_attributes", {})
    for attr in estimator._array_attributes:
        if attr not in derived:
            arrays[f"{name}/{attr}"] = np.ascontiguousarray(getattr(estimator, attr))
    for attr in _SCALARS:
        value = getattr(estimator, attr, None)
        if attr in type(estimator)._array_attributes or value is None:
            continue
        entry["attributes"][attr] = int(value)
    for attr in _JSON_ATTRIBUTES:
        if hasattr(estimator, attr):
            entry["attributes"][attr] = getattr(estimator, attr)
    if hasattr(estimator, "classes_"):
        entry["attributes"]["classes_"] = estimator.classes_.tolist()
        entry["attributes"]["classes_dtype"] = estimator.classes_.dtype.str
    if hasattr(estimator, "fit_report_"):
        entry["attributes"]["fit_report_"] = [r.to_dict() for r in estimator.fit_report_]
    return entry


def save(directory: str | Path, estimators: dict, metadata: dict | None = None) -> Path:
    """Write fitted ``estimators`` (name -> estimator) and JSON-able ``metadata`` to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    entries = {name: _describe(name, est, arrays) for name, est in estimators.items()}
    save_file(arrays, str(directory / ARRAYS))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "estimators": entries,
        "arrays": {key: {"sha256": _digest(a), "shape": list(a.shape), "dtype": a.dtype.str} for key, a in arrays.items()},
        "metadata": metadata or {},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=True))
    return directory


def read_manifest(directory: str | Path) -> dict:
    """The validated manifest of a saved directory (format and version checked)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise PersistenceError(f"{path}: no manifest (not a saved clipwatch density directory)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PersistenceError(f"{path}: manifest is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise PersistenceError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PersistenceError(
            f"{path}: format version {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    return manifest


def load(directory: str | Path) -> dict:
    """Load every estimator of a directory written by :func:`save`, verifying each array's digest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    array_path = directory / ARRAYS
    try:
        arrays = load_file(str(array_path))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise PersistenceError(f"{array_path}: cannot read arrays ({exc})") from None
    for key, info in manifest["arrays"].items():
        if key not in arrays:
            raise PersistenceError(f"{array_path}: array {key!r} is missing")
        if _digest(arrays[key]) != info["sha256"]:
            raise PersistenceError(f"{array_path}: array {key!r} does not match its SHA-256 (tampered or corrupt)")
    return {name: _restore(name, entry, arrays, directory) for name, entry in manifest["estimators"].items()}


def _restore(name: str, entry: dict, arrays: dict, directory: Path):
    cls = ESTIMATOR_TYPES.get(entry.get("type"))
    if cls is None:
        raise PersistenceError(f"{directory}: estimator {name!r} has unknown type {entry.get('type')!r}")
    params = dict(entry["params"])
    if "shrinkage" in cls().get_params() and "shrinkage" not in params:
        params["shrinkage"] = 0.0  # saved before shrinkage existed: fitted without it
    estimator = cls(**params)
    derived = getattr(cls, "_derived_attributes", {})
    for attr in cls._array_attributes:
        if attr in derived:
            continue
        key = f"{name}/{attr}"
        if key not in arrays:
            raise PersistenceError(f"{directory / ARRAYS}: array {key!r} is missing")
        setattr(estimator, attr, arrays[key])
    attributes = dict(entry["attributes"])
    if "classes_" in attributes:
        estimator.classes_ = np.array(attributes.pop("classes_"), dtype=np.dtype(attributes.pop("classes_dtype")))
    if "fit_report_" in attributes:
        estimator.fit_report_ = [CovarianceFit(**r) for r in attributes.pop("fit_report_")]
    for attr, value in attributes.items():
        setattr(estimator, attr, value)
    if derived:
        estimator._restore_derived()
    return estimator
