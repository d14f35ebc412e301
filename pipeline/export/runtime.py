"""Scoring with an exported classifier: ONNX Runtime for the model, the bundle's densities for the verdicts.

An export folder (``clipwatch export``) holds ``model.onnx``, ``export.json``, ``bundle/`` (a verbatim copy of the
detector bundle) and ``digests.json`` (SHA-256 of every other file). :meth:`OnnxDetector.load` checks them all, so
it scores like :class:`pipeline.detect.Detector` without torch running the model::

    detector = OnnxDetector.load("exports/default")
    features, scores = detector.score_clips(clips)     # (T, H, W, 3) uint8 clips, any frame size
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.detect.bundle import DetectorBundle, bundle_digest
from pipeline.detect.detector import BundleScoring, DetectorSettings
from pipeline.detect.evidence import BORDER_KEY, border_consistency
from pipeline.detect.features import ClipFeatures, model_inputs
from pipeline.errors import ClipwatchError
from pipeline.fileio import IntegrityError, file_sha256, verify_directory
from pipeline.models import Preprocessing

EXPORT_FORMAT = "clipwatch.onnx-export"
EXPORT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "export.json"
BUNDLE_DIR = "bundle"
INSTALL_HINT = "pip install 'clipwatch[onnx]'"


class ExportError(ClipwatchError, ValueError):
    """An export that cannot be written, does not match its model, or an export folder that fails its checks."""


def import_onnxruntime():
    """The ``onnxruntime`` module, or a one-line ExportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"onnxruntime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def open_session(path: str | Path, *, threads: int | None = None):
    """An ONNX Runtime CPU session on ``path``; ``threads`` caps its intra-op threads (default: the runtime's)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_session(session, outputs: Mapping[str, Any], inputs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(logits, {layer: (B, D) features})`` of one normalised float32 batch, as ``export.json`` ``outputs`` names them."""
    names = [outputs["logits"]["name"], *(entry["name"] for entry in outputs["features"])]
    values = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(inputs, dtype=np.float32)})
    return values[0], {entry["layer"]: value for entry, value in zip(outputs["features"], values[1:], strict=True)}


def read_export(directory: str | Path) -> dict:
    """``export.json`` of an export folder, after checking ``model.onnx`` against it and every file against
    ``digests.json``; a one-line ExportError names the first file that fails."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"{directory}: not a clipwatch export (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT \
            or manifest.get("format_version") != EXPORT_VERSION:
        raise ExportError(f"{path}: not a {EXPORT_FORMAT} version {EXPORT_VERSION} manifest")
    model = directory / MODEL_FILE
    if not model.is_file():
        raise ExportError(f"{model}: missing")
    if file_sha256(model) != manifest.get("model_sha256"):
        raise ExportError(f"{model}: SHA-256 does not match {MANIFEST_FILE} (tampered or corrupt)")
    try:
        verify_directory(directory, what="export")
        digest = bundle_digest(directory / BUNDLE_DIR)
    except IntegrityError as exc:
        raise ExportError(str(exc)) from None
    if digest != (manifest.get("bundle") or {}).get("digest"):
        raise ExportError(f"{directory / BUNDLE_DIR}: bundle digest does not match {MANIFEST_FILE}")
    return manifest


class OnnxDetector(BundleScoring):
    """A detector bundle and its classifier exported to ONNX; build one with :meth:`load`.

    The same scoring surface as :class:`pipeline.detect.Detector`: :meth:`features`, :meth:`score_features` and
    :meth:`score_clips`; clips get the model's own preprocessing (``model_inputs``) and the model runs in fp32.
    """

    def __init__(self, session, manifest: dict, bundle: DetectorBundle, *, alpha: float | None = None) -> None:
        self.session = session
        self.manifest = manifest
        self.bundle = bundle
        self.settings = DetectorSettings.from_mapping(bundle.settings)
        self.preprocessing = Preprocessing(**manifest["preprocessing"])
        self.alpha_override = alpha

    @classmethod
    def load(cls, directory: str | Path, *, alpha: float | None = None, threads: int | None = None) -> OnnxDetector:
        """Check and load an export folder; ``alpha`` flags at that false-alarm rate instead of the bundle's,
        ``threads`` caps ONNX Runtime's intra-op threads."""
        directory = Path(directory)
        manifest = read_export(directory)
        bundle = DetectorBundle.load(directory / BUNDLE_DIR)
        if alpha is not None:
            bundle.calibration.with_alpha(alpha)  # refuse a bad rate now, not at the first score
            alpha = float(alpha)
        return cls(open_session(directory / MODEL_FILE, threads=threads), manifest, bundle, alpha=alpha)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The exported model's logits of a normalised batch (a callable like the torch model, for the evidence)."""
        (logits,) = self.session.run([self.manifest["outputs"]["logits"]["name"]],
                                     {self.session.get_inputs()[0].name: np.ascontiguousarray(inputs.numpy(),
                                                                                              dtype=np.float32)})
        return torch.from_numpy(logits)

    def features(self, clips: Sequence[np.ndarray], labels: Sequence[int] | None = None, *,
                 batch_size: int | None = None) -> ClipFeatures:
        """Tapped, pooled features and logits of ``(T, H, W, 3)`` uint8 clips of any frame sizes, in order (one run
        per ``batch_size`` clips, all at once by default; a second one with the border masked when the bundle fuses
        the border consistency); ``labels`` default to -1."""
        if not len(clips):
            raise ClipwatchError("no clips to extract features from")
        size = batch_size or len(clips)
        logits, layers = [], {name: [] for name in self.layers}
        border = self.bundle.border if BORDER_KEY in self.bundle.evidence_keys else 0
        consistency = []
        for start in range(0, len(clips), size):
            inputs = model_inputs(clips[start:start + size], self.preprocessing).numpy()
            expected = tuple(self.manifest["input"]["shape"][1:])
            if inputs.shape[1:] != expected:
                raise ExportError(f"clips make model input of shape {inputs.shape[1:]}, the exported model takes "
                                  f"{expected} ({self.preprocessing.clip_len} frames)")
            batch_logits, batch_layers = run_session(self.session, self.manifest["outputs"], inputs)
            logits.append(batch_logits)
            if border:  # the masked view through the same graph
                consistency.append(border_consistency(self._logits, torch.from_numpy(inputs),
                                                      torch.from_numpy(batch_logits), border).numpy())
            for name in self.layers:
                layers[name].append(batch_layers[name])
        labels = np.full(len(clips), -1) if labels is None else np.asarray(labels)
        return ClipFeatures({name: np.concatenate(parts) for name, parts in layers.items()}, np.concatenate(logits),
                            labels, seqs=np.arange(len(clips)),
                            evidence={BORDER_KEY: np.concatenate(consistency)} if border else {})

