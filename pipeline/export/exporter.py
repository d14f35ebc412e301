"""``export_bundle``: a detector bundle's classifier to ONNX, checked against torch before anything is kept.

The folder it writes (see :mod:`pipeline.export.runtime`) is self-contained: the graph with the tapped layers as
extra outputs, the bundle copied verbatim (its digest unchanged), and ``export.json`` naming what was exported,
so ``OnnxDetector.load(DIR)`` needs neither the bundle's original folder nor its torch weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import pipeline
from pipeline.detect.bundle import bundle_digest
from pipeline.detect.detector import Detector
from pipeline.detect.evidence import HEATMAP_KEY
from pipeline.detect.features import model_inputs
from pipeline.export.graph import INPUT_NAME, TappedGraph
from pipeline.export.runtime import (
    BUNDLE_DIR,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    INSTALL_HINT,
    MANIFEST_FILE,
    MODEL_FILE,
    ExportError,
    import_onnxruntime,
    open_session,
    run_session,
)
from pipeline.fileio import DIGESTS_FILE, file_sha256, seal_directory

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""ONNX opset of the graph: supported by every onnxruntime since 1.14 and by the TorchScript exporter."""

TOLERANCE = 1e-3
"""Largest relative difference (max |ORT - torch| over max |torch|, per output) an export may show."""

EXPORT_ENTRIES = (MODEL_FILE, MANIFEST_FILE, BUNDLE_DIR, DIGESTS_FILE)


def export_bundle(bundle_dir: str | Path, out: str | Path, *, overwrite: bool = False, opset: int = DEFAULT_OPSET,
                  check_clips: int = 4, tolerance: float = TOLERANCE, seed: int = 0) -> dict:
    """Export the bundle's classifier (fp32, CPU) to ``out/model.onnx`` and return the ``export.json`` written.

    ``check_clips`` random clips go through torch (:meth:`Detector.features`) and ONNX Runtime; an output that
    differs by more than ``tolerance`` (relative) is refused and nothing is kept. A non-empty ``out`` is refused
    unless ``overwrite``, which replaces an earlier export's files and nothing else.
    """
    bundle_dir, out = Path(bundle_dir), Path(out)
    _check_out(out, bundle_dir, overwrite)
    onnx = _import_onnx()
    import_onnxruntime()
    if check_clips < 1:
        raise ExportError(f"check_clips must be >= 1, got {check_clips}")
    detector = Detector.load(bundle_dir, precision="fp32")
    if HEATMAP_KEY in detector.bundle.evidence_keys:
        raise ExportError(f"{bundle_dir}: fuses its heatmap score, whose decoder the ONNX export does not carry yet; "
                          "export a bundle fitted without --evidence heatmap")
    digest = bundle_digest(bundle_dir)
    prep = detector.manifest.preprocessing
    input_shape = tuple(model_inputs([np.zeros((prep.clip_len, prep.crop, prep.crop, 3), np.uint8)], prep).shape[1:])
    graph = TappedGraph(detector.model, detector.layers, detector.settings.pool_factor, input_shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would make a new `out` private
        model_path = staging / MODEL_FILE
        try:
            graph.export(model_path, input_shape, opset=opset)
            onnx.checker.check_model(str(model_path))
        except (torch.onnx.errors.OnnxExporterError, onnx.checker.ValidationError) as exc:
            raise ExportError(f"cannot export {detector.model_id} to ONNX opset {opset}: {exc}") from None
        outputs, differences = _verify(detector, graph, model_path, check_clips, tolerance, seed)
        shutil.copytree(bundle_dir, staging / BUNDLE_DIR)
        manifest = {
            "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
            "model_file": MODEL_FILE, "model_sha256": file_sha256(model_path), "opset": opset,
            "input": {"name": INPUT_NAME, "shape": ["batch", *input_shape], "dtype": "float32",
                      "layout": "N C T H W, normalised as preprocessing says (pipeline.detect.features.model_inputs)"},
            "outputs": outputs, "pool_factor": detector.settings.pool_factor, "precision": "fp32",
            "preprocessing": prep.model_dump(mode="json"), "class_names": detector.class_names,
            "bundle": {"path": BUNDLE_DIR, "digest": digest, "exported_from": str(bundle_dir.resolve())},
            "source_model": {"id": detector.model_id, "weights_sha256": detector.manifest.sha256},
            "verification": {"clips": check_clips, "tolerance": tolerance, "max_relative_difference": differences},
            "versions": {"clipwatch": pipeline.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": import_onnxruntime().__version__},
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        seal_directory(staging)
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|`` (the scale of the output, not of each element: features near
    zero would make an element-wise ratio meaningless)."""
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-6)
    return float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0)) / scale


def _verify(detector: Detector, graph: TappedGraph, model_path: Path, count: int, tolerance: float,
            seed: int) -> tuple[dict, dict[str, float]]:
    """Random clips through torch and ONNX Runtime: ``(export.json outputs, {output: relative difference})``;
    ExportError if any output differs by more than ``tolerance`` or has another shape."""
    prep = detector.manifest.preprocessing
    rng = np.random.default_rng(seed)
    clips = list(rng.integers(0, 256, (count, prep.clip_len, prep.crop, prep.crop, 3), dtype=np.uint8))
    expected = detector.features(clips)
    names = graph.output_names()
    outputs = {"logits": {"name": names[0], "shape": ["batch", int(expected.logits.shape[1])]},
               "features": [{"layer": layer, "name": name, "shape": ["batch", int(expected.layers[layer].shape[1])]}
                            for layer, name in zip(detector.layers, names[1:], strict=True)]}
    session = open_session(model_path)
    logits, layers = run_session(session, outputs, model_inputs(clips, prep).numpy())
    pairs = [(names[0], logits, expected.logits)]
    pairs += [(name, layers[layer], expected.layers[layer]) for layer, name in zip(detector.layers, names[1:], strict=True)]
    differences = {}
    for name, actual, reference in pairs:
        if actual.shape != reference.shape:
            raise ExportError(f"ONNX output {name!r} has shape {actual.shape}, torch gives {reference.shape}")
        differences[name] = relative_difference(actual, reference)
    worst = max(differences, key=differences.get)
    if differences[worst] > tolerance:
        raise ExportError(f"ONNX Runtime and torch disagree on {worst!r} by {differences[worst]:.3g} (relative, over "
                          f"{count} random clips; tolerance {tolerance:g}): export refused")
    log.debug("torch vs ONNX Runtime on %d random clips: largest relative difference %.3g (%s)", count,
             differences[worst], worst)
    return outputs, differences


def _umask() -> int:
    mask = os.umask(0o022)  # there is no getter: read it and put it straight back
    os.umask(mask)
    return mask


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError(f"onnx is not installed: {INSTALL_HINT}") from None
    return onnx


def _check_out(out: Path, bundle_dir: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, lies inside the bundle, or holds anything but (with ``overwrite``) an
    earlier export's files; before any work."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.resolve().is_relative_to(bundle_dir.resolve()):
        raise ExportError(f"{out}: inside the bundle {bundle_dir}; choose a folder outside it")
    entries = sorted(entry.name for entry in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise ExportError(f"{out}: not empty; choose a new --out, or pass --overwrite to replace an earlier export there")
    foreign = [name for name in entries if name not in EXPORT_ENTRIES]
    if foreign:
        raise ExportError(f"{out}: holds {foreign[0]!r}, which is not part of an export; --overwrite replaces only an "
                          f"export's files ({', '.join(EXPORT_ENTRIES)}): choose an empty folder")


def _move_into(staging: Path, out: Path) -> None:
    """Put the checked export in place: a rename when ``out`` is new, else its old export files replaced."""
    if not out.exists():
        os.replace(staging, out)
        return
    for name in EXPORT_ENTRIES:
        old = out / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in staging.iterdir():
        os.replace(entry, out / entry.name)
