"""Score step: a batch of embeddings → the bundle's per-layer likelihoods, fused score, p-value → verdicts.

Each embedding must come from the bundle's model and carry every layer at the dimension the bundle was fitted on
(otherwise `Rejected`). The batch is scored in one `DetectorBundle.score` call; each verdict carries the embedding's
fields (all but the features) plus the evidence, stamped ``timestamps["density"]`` (the alert rules read the
scoring time from it). A new verdict field is declared on `VerdictMessage` and filled here; the verdict log and
the alert rules take it from the message as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.detect import DetectorBundle
from pipeline.stream.messages import EmbeddingMessage, VerdictMessage
from pipeline.stream.steps import Rejected, screen

__all__ = ["DensityStep"]


class DensityStep:
    """Embeddings → verdicts with the bundle's densities and calibration; `alpha` overrides its false-alarm rate
    (the bundle itself is left as loaded)."""

    def __init__(self, bundle: DetectorBundle, alpha: float | None = None):
        self.bundle = bundle
        self.alpha = bundle.calibration.alpha if alpha is None else float(alpha)
        self.model_sha = str(bundle.model_ref["sha256"])
        self.dims = {layer: int(getattr(bundle.reducers[layer], "n_features_in_", 0)) for layer in bundle.layers}

    def problem(self, embedding: EmbeddingMessage) -> str | None:
        """Why the bundle cannot score `embedding`, or None."""
        if not embedding.model_id.endswith("@" + self.model_sha[:12]):
            return (f"embedding {embedding.key} comes from model {embedding.model_id}, the bundle was fitted on "
                    f"weights {self.model_sha[:12]}")
        missing = [key for key in self.bundle.evidence_keys if key not in embedding.evidence]
        if missing:
            return (f"embedding {embedding.key} lacks {', '.join(missing)}, which the bundle fuses (a classifier "
                    "stage loaded from another bundle?)")
        for layer, dim in self.dims.items():
            if layer not in embedding.features:
                return f"embedding {embedding.key} has no features for layer {layer!r}"
            if dim and embedding.features[layer].dim != dim:
                return (f"embedding {embedding.key}: layer {layer!r} has {embedding.features[layer].dim} values, "
                        f"the bundle expects {dim}")
        return None

    def __call__(self, embeddings: Sequence[EmbeddingMessage]) -> list[VerdictMessage | Rejected]:
        results, usable = screen(embeddings, self.problem)
        if not usable:
            return results
        chosen = [embeddings[i] for i in usable]
        features = {layer: np.stack([e.feature(layer) for e in chosen]) for layer in self.bundle.layers}
        softmax = np.array([e.softmax_max for e in chosen], dtype=np.float64)
        evidence = {key: np.array([e.evidence[key] for e in chosen]) for key in self.bundle.evidence_keys}
        scores = self.bundle.score(features, softmax, alpha=self.alpha, evidence=evidence)
        for row, (index, embedding) in enumerate(zip(usable, chosen, strict=True)):
            nested: dict[str, dict[str, float]] = {}
            for name, values in scores.loglik.items():
                layer, density = name.rsplit("/", 1)
                nested.setdefault(layer, {})[density] = float(values[row])
            results[index] = VerdictMessage(
                **embedding.model_dump(exclude={"features", "evidence"}), log_likelihoods=nested,
                fused_score=float(scores.fused[row]), p_value=min(1.0, max(0.0, float(scores.p_value[row]))),
                verdict=scores.verdicts[row], reasons=list(scores.reasons[row]),
            ).with_timestamp("density")
        return results
