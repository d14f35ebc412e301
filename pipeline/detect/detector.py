"""A loaded detector: a bundle, the model it was fitted on (weights checked against it) and its typed settings.

:meth:`Detector.load` is the one way to go from a bundle directory to scores::

    detector = Detector.load("pipeline/assets/bundles/default")          # or alpha=0.05: another false-alarm rate
    features, scores = detector.score_clips(clips)                       # (T, H, W, 3) uint8 clips, any frame size
    scores = detector.score_features(features.layers, features.softmax, evidence=features.evidence)

:meth:`Detector.preprocessing` gives the model's preprocessing without loading its weights (a decoder needs
nothing else). Nothing is changed after loading: an ``alpha`` override is applied when scoring, and the bundle's
own calibration keeps the rate it was fitted for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.detect.bundle import HEATMAP_DIR, BundleError, BundleScores, DetectorBundle, resolve_model_ref
from pipeline.detect.evidence import HEATMAP_KEY, Evidence
from pipeline.detect.features import ClipFeatures, extract_from_tensors, model_inputs
from pipeline.detect.zoo.heatmap import HeatmapDetector
from pipeline.errors import ClipwatchError
from pipeline.models import ModelError, ModelManifest, Preprocessing, load_model
from pipeline.models.device import resolve_device
from pipeline.models.manifest import MANIFEST_FILE, read_manifest
from pipeline.models.precision import model_precision, prepare_for_inference, resolve_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorSettings:
    """How a bundle was fitted (``bundle.json`` ``settings``); provenance is None for bundles that did not record it."""

    densities: tuple[str, ...]
    fused_density: str
    variance: float
    pool_factor: int
    false_alarm: float
    seed: int
    low_level_layers: tuple[str, ...]
    train_clips: int
    calibration_clips: int
    dataset: str | None = None
    split: int | None = None
    calibration_data: str | None = None
    precision: str = "fp32"
    """The precision the model ran in when the statistics were computed (bundles before it: fp32)."""

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> DetectorSettings:
        """Typed settings of a bundle; older bundles may lack provenance and ``low_level_layers`` (none fused apart)."""
        try:
            return cls(
                densities=tuple(str(d) for d in settings["densities"]),
                fused_density=str(settings["fused_density"]),
                variance=float(settings["variance"]),
                pool_factor=int(settings["pool_factor"]),
                false_alarm=float(settings["false_alarm"]),
                seed=int(settings["seed"]),
                low_level_layers=tuple(str(layer) for layer in settings.get("low_level_layers") or ()),
                train_clips=int(settings["train_clips"]),
                calibration_clips=int(settings["calibration_clips"]),
                dataset=_optional(settings.get("dataset"), str),
                split=_optional(settings.get("split"), int),
                calibration_data=_optional(settings.get("calibration_data"), str),
                precision=str(settings.get("precision") or "fp32"),
            )
        except KeyError as exc:
            raise BundleError(f"bundle settings lack {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise BundleError(f"bundle settings are malformed ({exc})") from None


def _optional(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def model_id(manifest: ModelManifest) -> str:
    """How messages and records name a model: architecture and the first 12 hex digits of its weights' SHA-256."""
    return f"{manifest.architecture}@{manifest.sha256[:12]}"


class BundleScoring:
    """The scoring surface shared by :class:`Detector` and ``pipeline.export.OnnxDetector``: subclasses hold
    ``bundle`` and ``alpha_override`` and provide ``features(clips, labels, batch_size=)``."""

    bundle: DetectorBundle
    alpha_override: float | None

    @property
    def layers(self) -> list[str]:
        return list(self.bundle.layers)

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names)

    @property
    def alpha(self) -> float:
        """The false-alarm rate verdicts are flagged at: the override, else the bundle's calibration."""
        return self.bundle.calibration.alpha if self.alpha_override is None else self.alpha_override

    def features(self, clips: Sequence[np.ndarray], labels: Sequence[int] | None = None, *,
                 batch_size: int | None = None) -> ClipFeatures:
        raise NotImplementedError

    def score_features(self, features: Mapping[str, np.ndarray], softmax: np.ndarray, *,
                       evidence: Mapping[str, np.ndarray] | None = None) -> BundleScores:
        """Scores and verdicts of tapped features (``{layer: (N, D)}``); ``softmax`` is each clip's largest
        softmax probability ``(N,)``, or the probabilities ``(N, C)``; ``evidence`` (``ClipFeatures.evidence``)
        is needed by a bundle that fuses some."""
        softmax = np.asarray(softmax)
        softmax_max = softmax.max(axis=1) if softmax.ndim == 2 else softmax
        return self.bundle.score(dict(features), softmax_max, alpha=self.alpha_override, evidence=evidence)

    def score_clips(self, clips: Sequence[np.ndarray], *,
                    batch_size: int | None = None) -> tuple[ClipFeatures, BundleScores]:
        """Features (with logits; ``.softmax`` gives probabilities) and scores of uint8 clips of any frame sizes."""
        features = self.features(clips, batch_size=batch_size)
        return features, self.score_features(features.layers, features.softmax, evidence=features.evidence)


@dataclass(frozen=True, eq=False)
class Detector(BundleScoring):
    """A bundle and its model, loaded and checked together; build one with :meth:`Detector.load`."""

    model: nn.Module
    manifest: ModelManifest
    bundle: DetectorBundle
    settings: DetectorSettings
    alpha_override: float | None = None
    device: torch.device = torch.device("cpu")
    heatmap: HeatmapDetector | None = None
    """The bundle's OOD heatmap decoder (``clipwatch fit --heatmap``), or None."""

    @classmethod
    def load(cls, bundle_dir: str | Path, *, alpha: float | None = None, device: str | torch.device = "cpu",
             precision: str | None = None) -> Detector:
        """Load the bundle (every file checked against its digests) and its model (weights checked against the
        bundle), in eval mode on ``device``; ``alpha`` flags at that false-alarm rate instead of the bundle's.

        ``device`` is checked first (:func:`~pipeline.models.device.resolve_device`): one asking for hardware this
        machine lacks raises a one-line :class:`~pipeline.models.ModelError` before anything is read. ``precision``
        (:data:`~pipeline.models.precision.PRECISIONS`; default: the bundle's) is the backbone's arithmetic; one
        other than the bundle's is logged, since the statistics were computed in the bundle's. Densities always
        score on the CPU in float64."""
        device = resolve_device(device)
        bundle = DetectorBundle.load(bundle_dir)
        settings = DetectorSettings.from_mapping(bundle.settings)
        if alpha is not None:
            bundle.calibration.with_alpha(alpha)  # refuse a bad rate now, not at the first score
            alpha = float(alpha)
        try:
            concrete = resolve_precision(precision or settings.precision, device)
        except ModelError:
            if precision:  # asked for explicitly: refused in one line
                raise
            concrete = resolve_precision("auto", device)  # the bundle's (e.g. fp16 of a GPU) does not run here
            log.warning("%s: fitted in %s, which %s cannot run; scoring in %s", bundle_dir, settings.precision,
                        device, concrete)
        if concrete != settings.precision:
            log.info("%s: scoring in %s, the bundle's statistics were computed in %s", bundle_dir, concrete,
                     settings.precision)
        model, manifest = load_model(bundle.resolve_model(bundle_dir), map_location=device)
        model, _ = prepare_for_inference(model, concrete, device=device)
        heatmap_dir = Path(bundle_dir) / HEATMAP_DIR
        heatmap = HeatmapDetector.load(heatmap_dir, device=device) if heatmap_dir.is_dir() else None
        if heatmap is None and HEATMAP_KEY in bundle.evidence_keys:
            raise BundleError(f"{bundle_dir}: fuses its OOD heatmap score but has no {HEATMAP_DIR}/ decoder")
        return cls(model, manifest, bundle, settings, alpha, device, heatmap)

    @staticmethod
    def preprocessing(bundle_dir: str | Path) -> Preprocessing:
        """The preprocessing of a bundle's model, after checking the bundle's digests and the model's SHA-256,
        without loading the densities or the weights (what a decoder needs). A loaded detector's is
        ``detector.manifest.preprocessing``."""
        manifest = DetectorBundle.read_manifest(bundle_dir)
        return read_manifest(resolve_model_ref(manifest["model"], bundle_dir) / MANIFEST_FILE).preprocessing

    @property
    def precision(self) -> str:
        """The precision the model runs in (``fp32``, ``bf16`` or ``fp16``)."""
        return model_precision(self.model)

    @property
    def model_id(self) -> str:
        return model_id(self.manifest)

    @property
    def evidence(self) -> Evidence:
        """What the bundle fuses besides its densities, to compute in each forward pass (with the heatmap decoder,
        whose maps also colour thumbnails)."""
        return Evidence(tuple(self.bundle.evidence_keys), self.heatmap, self.bundle.border)

    def features(self, clips: Sequence[np.ndarray], labels: Sequence[int] | None = None, *,
                 batch_size: int | None = None, evidence: bool = True) -> ClipFeatures:
        """Tapped features and logits of ``(T, H, W, 3)`` uint8 clips of any frame sizes, in order (one forward
        pass per ``batch_size`` clips, all at once by default), pooled by the bundle's ``pool_factor``, and the
        evidence the bundle fuses (unless ``evidence=False``: features only); ``labels`` default to -1."""
        if not len(clips):
            raise ClipwatchError("no clips to extract features from")
        size = batch_size or len(clips)
        inputs = (model_inputs(clips[i:i + size], self.manifest.preprocessing).to(self.device)
                  for i in range(0, len(clips), size))
        layers, logits, evidence = extract_from_tensors(self.model, inputs, self.bundle.layers,
                                                        pool_factor=self.settings.pool_factor,
                                                        evidence=self.evidence if evidence else None)
        labels = np.full(len(clips), -1) if labels is None else np.asarray(labels)
        return ClipFeatures(layers, logits, labels, seqs=np.arange(len(clips)), evidence=evidence)

