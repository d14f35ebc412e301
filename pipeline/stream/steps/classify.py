"""Classify step: a batch of clips, from any streams → one tapped forward pass → one `EmbeddingMessage` each.

The clips are preprocessed as the model's manifest says (clips of equal frame size together, since streams differ
in resolution); the model runs once with a `FeatureTap` on the bundle's layers; each embedding carries the
prediction, the softmax maximum, each layer's pooled features as float32 and a small JPEG of the middle frame. When
the bundle has an OOD heatmap decoder (``clipwatch fit --heatmap``), the same forward pass feeds it and the JPEG shows
the heatmap over the part of the frame the model sees: nothing on a clip like the training data, a glow where a clip
differs from it, so that an alert's thumbnail says where to look. Evidence the bundle fuses besides its densities
(:mod:`pipeline.detect.evidence`) is computed in the same step and travels in the embedding, and so do the clip's
picture statistics when a per-camera normal model needs them (:func:`pipeline.detect.camera.scene_statistics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.detect import Detector
from pipeline.detect.camera import scene_statistics
from pipeline.detect.detector import model_id
from pipeline.detect.evidence import Evidence
from pipeline.detect.features import model_input_problem, model_inputs
from pipeline.models import FeatureTap, ModelManifest
from pipeline.stream.messages import (
    MAX_THUMBNAIL_BYTES,
    ClipMessage,
    EmbeddingMessage,
    LayerFeatures,
    frame_shape_problem,
)
from pipeline.stream.steps import Rejected, screen
from pipeline.video.preprocess import model_window

__all__ = ["ClassifierStep", "heatmap_overlay", "thumbnail_jpeg"]


def heatmap_overlay(frame: np.ndarray, heat: np.ndarray, preprocessing) -> np.ndarray:
    """An (H, W, 3) RGB frame with an OOD heatmap (``(S, S)`` in [0, 1], over the part of the frame the model sees)
    blended in: the heatmap's colour at an opacity that grows with its value, so zero leaves the frame as it is."""
    top, left, rows, cols = model_window(*frame.shape[:2], preprocessing.short_side, preprocessing.crop,
                                         preprocessing.fit)
    value = cv2.resize(np.clip(heat, 0.0, 1.0).astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    # A bright red-to-yellow tint (never a dark colour that vanishes into a textured frame) whose opacity grows with
    # the value; the heatmap of a frame an attack painted stays around 0.1-0.3, so both saturate well below 1.
    colour = cv2.applyColorMap((np.clip(3 * value, 0.0, 1.0) * 255).astype(np.uint8),
                               cv2.COLORMAP_AUTUMN)[..., ::-1].astype(np.float32)
    opacity = np.clip(3 * value, 0.0, 0.85)[..., None]
    out = np.array(frame, dtype=np.uint8, copy=True)
    region = out[top:top + rows, left:left + cols].astype(np.float32)
    out[top:top + rows, left:left + cols] = np.rint(region * (1 - opacity) + colour * opacity).astype(np.uint8)
    return out


def thumbnail_jpeg(frame: np.ndarray, size: int, quality: int = 80) -> bytes | None:
    """A JPEG of an (H, W, 3) RGB frame whose longer side is at most `size` pixels (None if `size` is 0)."""
    if size <= 0:
        return None
    height, width = frame.shape[:2]
    scale = size / max(height, width)
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
    for attempt in (quality, min(quality, 50)):
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, attempt])
        if ok and encoded.size <= MAX_THUMBNAIL_BYTES:
            return encoded.tobytes()
    return None


class ClassifierStep:
    """Clips → embeddings with one forward pass per call; answers `Rejected` for clips the model cannot take."""

    def __init__(self, model: nn.Module, manifest: ModelManifest, layers: Sequence[str], *, pool_factor: int = 4,
                 device: str = "cpu", thumbnail_size: int = 160, thumbnail_quality: int = 80,
                 evidence: Evidence | None = None, scene: bool = False):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.manifest = manifest
        self.preprocessing = manifest.preprocessing
        self.layers = list(layers)
        self.tap = FeatureTap(self.model, self.layers, pool_factor=pool_factor)
        self.model_id = model_id(manifest)
        self.thumbnail_size = thumbnail_size
        self.thumbnail_quality = thumbnail_quality
        self.evidence = evidence or Evidence()
        self.scene = scene

    @classmethod
    def from_detector(cls, detector: Detector, *, device: str | None = None, thumbnail_size: int = 160,
                      thumbnail_quality: int = 80, scene: bool = False) -> ClassifierStep:
        """The detector's model tapped at its bundle's layers, computing the evidence its bundle fuses (with its
        heatmap decoder, if the bundle has one) and, with ``scene``, each clip's picture statistics for per-camera
        normal models."""
        return cls(detector.model, detector.manifest, detector.bundle.layers,
                   pool_factor=detector.settings.pool_factor, device=device or str(detector.device),
                   thumbnail_size=thumbnail_size, thumbnail_quality=thumbnail_quality, evidence=detector.evidence,
                   scene=scene)

    def problem(self, clip: ClipMessage) -> str | None:
        """Why the model cannot take `clip`, or None; checks the shape only, before anything is resized."""
        length, _, _, channels = clip.shape
        if length != self.preprocessing.clip_len:
            return (f"clip {clip.key} has {length} frames but model {self.model_id} takes "
                    f"{self.preprocessing.clip_len}")
        if channels != 3:
            return f"clip {clip.key} has {channels} channels, the model takes RGB"
        problem = frame_shape_problem(clip.shape) or model_input_problem(clip.shape, self.preprocessing)
        return f"clip {clip.key}: {problem}" if problem else None

    def __call__(self, clips: Sequence[ClipMessage]) -> list[EmbeddingMessage | Rejected]:
        results, usable = screen(clips, self.problem)
        if usable:
            inputs = model_inputs([clips[i].array for i in usable], self.preprocessing).to(self.device)
            logits, features, evidence, heat = self.evidence.forward(self.model, self.tap, inputs,
                                                                     maps=self.thumbnail_size > 0)
            heat = None if heat is None else heat.cpu().numpy()
            probabilities = torch.softmax(logits.double(), dim=1).cpu().numpy()
            features = {name: values.cpu().numpy() for name, values in features.items()}
            evidence = {key: values.cpu().numpy() for key, values in evidence.items()}
            scene = (scene_statistics(inputs, self.preprocessing.mean, self.preprocessing.std) if self.scene
                     else None)
            for row, index in enumerate(usable):
                results[index] = self._embedding(clips[index], probabilities[row],
                                                 {name: values[row] for name, values in features.items()},
                                                 None if heat is None else heat[row],
                                                 {key: float(values[row]) for key, values in evidence.items()},
                                                 None if scene is None else scene[row])
        return results

    def _embedding(self, clip: ClipMessage, probabilities: np.ndarray, features: dict[str, np.ndarray],
                   heat: np.ndarray | None, evidence: dict[str, float],
                   scene: np.ndarray | None = None) -> EmbeddingMessage:
        prediction = int(np.argmax(probabilities))
        frames = clip.array
        middle = frames[len(frames) // 2]
        if heat is not None and self.thumbnail_size > 0:
            middle = heatmap_overlay(middle, heat, self.preprocessing)
        return EmbeddingMessage.from_arrays(
            features, stream_id=clip.stream_id, seq=clip.seq, pts=list(clip.pts), label=clip.label,
            source=clip.source, timestamps=clip.timestamps, model_id=self.model_id, prediction=prediction,
            class_name=self.manifest.class_names[prediction],
            softmax_max=min(1.0, max(0.0, float(probabilities[prediction]))),
            thumbnail=thumbnail_jpeg(middle, self.thumbnail_size, self.thumbnail_quality), evidence=evidence,
            scene=None if scene is None else LayerFeatures.from_array(scene),
        ).with_timestamp("classifier")

    def close(self) -> None:
        self.tap.close()
