"""Score step: a batch of embeddings → the bundle's per-layer likelihoods, fused score, p-value → verdicts.

Each embedding must come from the bundle's model and carry every layer at the dimension the bundle was fitted on
(otherwise `Rejected`). The batch is scored in one `DetectorBundle.score` call; each verdict carries the embedding's
fields (all but the features) plus the evidence, stamped ``timestamps["density"]`` (the alert rules read the
scoring time from it). A new verdict field is declared on `VerdictMessage` and filled here; the verdict log and
the alert rules take it from the message as it is. With per-camera normal models (the config's ``camera_normal``),
each camera's verdicts combine the bundle's and its own model's (:mod:`pipeline.stream.steps.camera`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config.camera import CameraDirectory, CameraNormalConfig
from pipeline.detect import DetectorBundle
from pipeline.detect.calibration import NORMAL
from pipeline.stream.messages import EmbeddingMessage, VerdictMessage
from pipeline.stream.steps import Rejected, screen
from pipeline.stream.steps.camera import CameraModels

__all__ = ["DensityStep"]


class DensityStep:
    """Embeddings → verdicts with the bundle's densities and calibration; `alpha` overrides its false-alarm rate
    (the bundle itself is left as loaded); `cameras` says which cameras learn their own normal (none by default)."""

    def __init__(self, bundle: DetectorBundle, alpha: float | None = None, cameras: CameraDirectory | None = None):
        self.bundle = bundle
        self.cameras = (CameraModels(cameras, bundle.layers[-1]) if cameras is not None and cameras.enabled
                        else None)
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
        # A camera with a normal model leaves the bundle (1 - share) of the rate: score each rate's clips together.
        cameras = [self.cameras.judged(e) if self.cameras is not None else None for e in chosen]
        rates = [self.alpha if one is None else self.alpha * (1 - one[1].share) for one in cameras]
        fields: list[dict] = [{} for _ in chosen]
        for rate in dict.fromkeys(rates):
            rows = [row for row, value in enumerate(rates) if value == rate]
            for row, values in zip(rows, self._bundle_fields([chosen[row] for row in rows], rate), strict=True):
                fields[row] = values
        if self.cameras is not None:
            self._judge_cameras(chosen, cameras, fields)
        for index, embedding, values in zip(usable, chosen, fields, strict=True):
            results[index] = VerdictMessage(
                **embedding.model_dump(exclude={"features", "evidence", "scene"}), **values,
            ).with_timestamp("density")
        return results

    def _judge_cameras(self, chosen: Sequence[EmbeddingMessage],
                       cameras: list[tuple[str, CameraNormalConfig] | None], fields: list[dict]) -> None:
        """Each clip's verdict fields combined with its camera model's (:mod:`pipeline.stream.steps.camera`), so
        that a clip is flagged exactly when its p-value is at most ``alpha``; then the cameras learn the clips
        judged normal."""
        judgements = self.cameras.judge(chosen, cameras, np.array([values["p_value"] for values in fields]),
                                        self.alpha)
        for values, one, judgement in zip(fields, cameras, judgements, strict=True):
            if one is None:
                continue
            if judgement is None or judgement.p_value is None:  # warming up: the bundle alone, at its share
                values["p_value"] = self._consistent(min(1.0, values["p_value"] / (1 - one[1].share)), values)
                continue
            values["camera_p_values"] = judgement.p_values
            values["p_value"] = self._consistent(judgement.p_value, values, judgement.verdict)
            if judgement.verdict is None:
                continue
            if values["verdict"] == NORMAL:
                values["verdict"], values["reasons"] = judgement.verdict, [judgement.reason]
            elif judgement.decisive:  # the stronger evidence names the kind and comes first
                values["verdict"], values["reasons"] = judgement.verdict, [judgement.reason, *values["reasons"]]
            else:
                values["reasons"] = [*values["reasons"], judgement.reason]
        self.cameras.learn(chosen, cameras, [values["verdict"] for values in fields])

    def _consistent(self, p_value: float, values: dict, camera_verdict: str | None = None) -> float:
        """``p_value`` nudged across ``alpha`` where rounding put it on the wrong side of the verdict (the bundle
        compared its p-value with ``(1 - share) * alpha``, the published one is divided by ``1 - share``)."""
        flagged = values["verdict"] != NORMAL or camera_verdict is not None
        if flagged and p_value > self.alpha:
            return self.alpha
        if not flagged and p_value <= self.alpha:
            return float(np.nextafter(self.alpha, 1.0))
        return p_value

    def _bundle_fields(self, chosen: Sequence[EmbeddingMessage], alpha: float) -> list[dict]:
        """The verdict fields the bundle gives each embedding at false-alarm rate ``alpha``."""
        features = {layer: np.stack([e.feature(layer) for e in chosen]) for layer in self.bundle.layers}
        softmax = np.array([e.softmax_max for e in chosen], dtype=np.float64)
        evidence = {key: np.array([e.evidence[key] for e in chosen]) for key in self.bundle.evidence_keys}
        scores = self.bundle.score(features, softmax, alpha=alpha, evidence=evidence)
        out = []
        for row in range(len(chosen)):
            nested: dict[str, dict[str, float]] = {}
            for name, values in scores.loglik.items():
                layer, density = name.rsplit("/", 1)
                nested.setdefault(layer, {})[density] = float(values[row])
            out.append({"log_likelihoods": nested, "fused_score": float(scores.fused[row]),
                        "p_value": min(1.0, max(0.0, float(scores.p_value[row]))),
                        "verdict": scores.verdicts[row], "reasons": list(scores.reasons[row])})
        return out
