"""Classifier stage: batches of clips, from any streams, → one tapped forward pass → one `EmbeddingMessage` each.

`ClassifierStep` is the pure part (clip messages in, embedding messages out, no bus): it preprocesses the clips as
the model's manifest says (grouping clips of equal frame size, since streams differ in resolution), runs the model
once with a `FeatureTap` on the bundle's layers, and attaches the prediction, the softmax maximum, each layer's
pooled features as float32 and a small JPEG of the clip's middle frame. `ClassifierStage` wraps it for `StageLoop`,
which batches across streams (`max_batch`, `max_wait_ms`), publishes, then acknowledges.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.bus import ClipMessage, EmbeddingMessage
from pipeline.bus.messages import MAX_THUMBNAIL_BYTES, frame_shape_problem
from pipeline.config import ClassifierConfig
from pipeline.detect import DetectorBundle
from pipeline.detect.features import model_input_problem, model_inputs
from pipeline.models import FeatureTap, ModelManifest, load_model
from workers.runtime import Inbound, Outcome, Rejected, Stage, outcomes_for

logger = logging.getLogger(__name__)

INPUT_TOPIC, OUTPUT_TOPIC = "clips", "embeddings"


def model_id(manifest: ModelManifest) -> str:
    """How messages name a model: architecture and the first 12 hex digits of its weights' SHA-256."""
    return f"{manifest.architecture}@{manifest.sha256[:12]}"


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
                 device: str = "cpu", thumbnail_size: int = 160, thumbnail_quality: int = 80):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.manifest = manifest
        self.preprocessing = manifest.preprocessing
        self.layers = list(layers)
        self.tap = FeatureTap(self.model, self.layers, pool_factor=pool_factor)
        self.model_id = model_id(manifest)
        self.thumbnail_size = thumbnail_size
        self.thumbnail_quality = thumbnail_quality

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, config: ClassifierConfig | None = None) -> ClassifierStep:
        """The bundle's model (its SHA-256 checked against the bundle) tapped at the bundle's layers."""
        config = config or ClassifierConfig()
        bundle = DetectorBundle.load(bundle_dir)
        model, manifest = load_model(bundle.resolve_model(bundle_dir))
        return cls(model, manifest, bundle.layers, pool_factor=int(bundle.settings.get("pool_factor", 4)),
                   device=config.device, thumbnail_size=config.thumbnail_size,
                   thumbnail_quality=config.thumbnail_quality)

    def check(self, clip: ClipMessage) -> str | None:
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
        results: list[EmbeddingMessage | Rejected | None] = [None] * len(clips)
        usable: list[int] = []
        for index, clip in enumerate(clips):
            reason = self.check(clip)
            if reason is None:
                usable.append(index)
            else:
                results[index] = Rejected(reason)
        if usable:
            logits, features = self.tap(self._inputs([clips[i] for i in usable]))
            probabilities = torch.softmax(logits.double(), dim=1).cpu().numpy()
            features = {name: values.cpu().numpy() for name, values in features.items()}
            for row, index in enumerate(usable):
                results[index] = self._embedding(clips[index], probabilities[row],
                                                 {name: values[row] for name, values in features.items()})
        return results

    def _inputs(self, clips: list[ClipMessage]) -> torch.Tensor:
        """The model input of every clip in order, preprocessing clips of equal frame size together."""
        return model_inputs([clip.array for clip in clips], self.preprocessing).to(self.device)

    def _embedding(self, clip: ClipMessage, probabilities: np.ndarray,
                   features: dict[str, np.ndarray]) -> EmbeddingMessage:
        prediction = int(np.argmax(probabilities))
        frames = clip.array
        return EmbeddingMessage.from_arrays(
            features, stream_id=clip.stream_id, seq=clip.seq, pts=list(clip.pts), label=clip.label,
            source=clip.source, timestamps=clip.timestamps, model_id=self.model_id, prediction=prediction,
            class_name=self.manifest.class_names[prediction],
            softmax_max=min(1.0, max(0.0, float(probabilities[prediction]))),
            thumbnail=thumbnail_jpeg(frames[len(frames) // 2], self.thumbnail_size, self.thumbnail_quality),
        ).with_timestamp("classifier")

    def close(self) -> None:
        self.tap.close()


class ClassifierStage(Stage):
    """`ClassifierStep` on the "clips" topic, publishing to "embeddings"."""

    name = "classifier"
    input_topic = INPUT_TOPIC
    input_type = ClipMessage
    output_topic = OUTPUT_TOPIC

    def __init__(self, step: ClassifierStep, max_batch: int = 8, max_wait_s: float = 0.05):
        self.classify = step
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s

    @classmethod
    def from_config(cls, bundle_dir: str | Path, config: ClassifierConfig) -> ClassifierStage:
        if config.threads:
            torch.set_num_threads(config.threads)
        step = ClassifierStep.from_bundle(bundle_dir, config)
        logger.info("classifier: model %s, layers %s, batches of up to %d clips within %d ms", step.model_id,
                    ", ".join(step.layers), config.max_batch, config.max_wait_ms)
        return cls(step, config.max_batch, config.max_wait_ms / 1000)

    def step(self, items: list[Inbound]) -> list[Outcome]:
        return outcomes_for(items, self.classify([item.message for item in items]))

    def close(self) -> None:
        self.classify.close()
