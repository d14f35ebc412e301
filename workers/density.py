"""Density stage: batches of embeddings → the bundle's per-layer likelihoods, fused score, p-value → verdicts.

`DensityStep` is the pure part: it checks each embedding came from the bundle's model and carries every layer at
the dimension the bundle was fitted on (otherwise `Rejected`, and the loop dead-letters it), scores the batch in
one `DetectorBundle.score` call and builds one `VerdictMessage` per clip, stamped ``timestamps["density"]`` (the
sink's alert rules read the scoring time from it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.bus import EmbeddingMessage, VerdictMessage
from pipeline.config import DensityConfig
from pipeline.detect import DetectorBundle
from workers.runtime import Inbound, Outcome, Rejected, Stage, outcomes_for

logger = logging.getLogger(__name__)

INPUT_TOPIC, OUTPUT_TOPIC = "embeddings", "verdicts"


class DensityStep:
    """Embeddings → verdicts with the bundle's densities and calibration; `alpha` overrides its false-alarm rate."""

    def __init__(self, bundle: DetectorBundle, alpha: float | None = None):
        self.bundle = bundle
        if alpha is not None:
            bundle.calibration.alpha = float(alpha)
        self.model_sha = str(bundle.model_ref["sha256"])
        self.dims = {layer: int(getattr(bundle.reducers[layer], "n_features_in_", 0)) for layer in bundle.layers}

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, config: DensityConfig | None = None) -> DensityStep:
        config = config or DensityConfig()
        return cls(DetectorBundle.load(bundle_dir), config.alpha)

    @property
    def alpha(self) -> float:
        return self.bundle.calibration.alpha

    def check(self, embedding: EmbeddingMessage) -> str | None:
        """Why the bundle cannot score `embedding`, or None."""
        if not embedding.model_id.endswith("@" + self.model_sha[:12]):
            return (f"embedding {embedding.key} comes from model {embedding.model_id}, the bundle was fitted on "
                    f"weights {self.model_sha[:12]}")
        for layer, dim in self.dims.items():
            if layer not in embedding.features:
                return f"embedding {embedding.key} has no features for layer {layer!r}"
            if dim and embedding.features[layer].dim != dim:
                return (f"embedding {embedding.key}: layer {layer!r} has {embedding.features[layer].dim} values, "
                        f"the bundle expects {dim}")
        return None

    def __call__(self, embeddings: Sequence[EmbeddingMessage]) -> list[VerdictMessage | Rejected]:
        results: list[VerdictMessage | Rejected | None] = [None] * len(embeddings)
        usable = []
        for index, embedding in enumerate(embeddings):
            reason = self.check(embedding)
            if reason is None:
                usable.append(index)
            else:
                results[index] = Rejected(reason)
        if not usable:
            return results
        chosen = [embeddings[i] for i in usable]
        features = {layer: np.stack([e.feature(layer) for e in chosen]) for layer in self.bundle.layers}
        softmax = np.array([e.softmax_max for e in chosen], dtype=np.float64)
        scores = self.bundle.score(features, softmax)
        for row, index in enumerate(usable):
            nested: dict[str, dict[str, float]] = {}
            for name, values in scores.loglik.items():
                layer, density = name.rsplit("/", 1)
                nested.setdefault(layer, {})[density] = float(values[row])
            embedding = embeddings[index]
            results[index] = VerdictMessage(
                stream_id=embedding.stream_id, seq=embedding.seq, pts=embedding.pts, label=embedding.label,
                source=embedding.source, timestamps=embedding.timestamps, model_id=embedding.model_id,
                log_likelihoods=nested, fused_score=float(scores.fused[row]),
                p_value=min(1.0, max(0.0, float(scores.p_value[row]))), verdict=scores.verdicts[row],
                reasons=list(scores.reasons[row]), prediction=embedding.prediction,
                class_name=embedding.class_name, softmax_max=embedding.softmax_max, thumbnail=embedding.thumbnail,
            ).with_timestamp("density")
        return results


class DensityStage(Stage):
    """`DensityStep` on the "embeddings" topic, publishing to "verdicts"."""

    name = "density"
    input_topic = INPUT_TOPIC
    input_type = EmbeddingMessage
    output_topic = OUTPUT_TOPIC

    def __init__(self, step: DensityStep, max_batch: int = 64, max_wait_s: float = 0.01):
        self.score = step
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s

    @classmethod
    def from_config(cls, bundle_dir: str | Path, config: DensityConfig) -> DensityStage:
        step = DensityStep.from_bundle(bundle_dir, config)
        logger.info("density: layers %s, false-alarm rate %g", ", ".join(step.bundle.layers), step.alpha)
        return cls(step, config.max_batch, config.max_wait_ms / 1000)

    def step(self, items: list[Inbound]) -> list[Outcome]:
        return outcomes_for(items, self.score([item.message for item in items]))
