"""What the rules read (`ScoredClip`) and what they emit (`Alert`), with the one JSON encoding of an alert.

`ScoredClip` is deliberately the alerting layer's own type: the sink worker builds it from a verdict message with
`ScoredClip.from_mapping`, so this package does not depend on the bus schema.

The alert body (``Alert.to_body()``) is what the JSONL sink writes as one line and what webhooks receive; it is
described by ``alert.schema.json``. ``Alert.to_json_bytes()`` is its canonical encoding (sorted keys, no spaces,
UTF-8): the same alert always gives the same bytes, hence the same HMAC signature on every retry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.alerts.errors import AlertInputError
from pipeline.fileio import atomic_write

SCHEMA_VERSION = 1
"""Version of the alert body; bumped on any change a receiver could notice (``schema_version`` in every body)."""

BODY_TYPE = "clipwatch.alert"


def canonical_json(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON with sorted keys; non-finite floats are refused (JSON has none)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True)
class ScoredClip:
    """One clip as scored by the density stage: the verdict and the evidence behind it.

    Attributes:
        stream_id, seq: the clip's stream and position in it; ``clip_key`` is ``"stream_id:seq"``.
        verdict: ``"normal"``, ``"novel"`` or ``"adversarial"`` (any string: the rules decide which alert).
        reasons: one-line explanations from the detector.
        fused_score: the density stage's fused score (its sign convention is the detector's; thresholds on it are
            two-sided); p_value: its calibrated p-value in [0, 1], or None when the detector is uncalibrated.
        prediction: the classifier's class name; softmax: its maximum softmax probability.
        layer_scores: per-layer (or per-density) scores, e.g. log-likelihoods.
        clip_start, clip_end: presentation times (seconds) of the clip on its stream's clock.
        scored_at: unix time when the density stage scored the clip.
        thumbnail: JPEG bytes, or a path/URI where a thumbnail already lives, or None.
    """

    stream_id: str
    seq: int
    verdict: str
    fused_score: float
    clip_start: float
    clip_end: float
    scored_at: float
    p_value: float | None = None
    reasons: tuple[str, ...] = ()
    prediction: str | None = None
    softmax: float | None = None
    layer_scores: Mapping[str, float] = field(default_factory=dict)
    thumbnail: bytes | str | None = field(default=None, repr=False)  # bytearray/memoryview/PathLike are converted

    def __post_init__(self) -> None:
        key = f"{self.stream_id}:{self.seq}" if isinstance(self.stream_id, str) else repr(self.stream_id)
        if not isinstance(self.stream_id, str) or not self.stream_id:
            raise AlertInputError(key, "stream_id must be a non-empty string")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise AlertInputError(key, f"seq must be a non-negative integer, got {self.seq!r}")
        if not isinstance(self.verdict, str) or not self.verdict:
            raise AlertInputError(key, f"verdict must be a non-empty string, got {self.verdict!r}")
        for name in ("fused_score", "clip_start", "clip_end", "scored_at"):
            object.__setattr__(self, name, _finite(key, name, getattr(self, name)))
        if self.p_value is not None:
            object.__setattr__(self, "p_value", _finite(key, "p_value", self.p_value))
            if not 0.0 <= self.p_value <= 1.0:
                raise AlertInputError(key, f"p_value must lie in [0, 1], got {self.p_value!r}")
        if self.clip_end < self.clip_start:
            raise AlertInputError(key, f"clip_end {self.clip_end} is before clip_start {self.clip_start}")
        if self.softmax is not None:
            object.__setattr__(self, "softmax", _finite(key, "softmax", self.softmax))
        if self.prediction is not None and not isinstance(self.prediction, str):
            raise AlertInputError(key, f"prediction must be a string, got {self.prediction!r}")
        if isinstance(self.reasons, str) or not all(isinstance(r, str) for r in self.reasons):
            raise AlertInputError(key, "reasons must be a list of strings")
        object.__setattr__(self, "reasons", tuple(self.reasons))
        scores = {str(name): _finite(key, f"layer_scores[{name}]", v) for name, v in dict(self.layer_scores).items()}
        object.__setattr__(self, "layer_scores", MappingProxyType(scores))
        if isinstance(self.thumbnail, os.PathLike):
            object.__setattr__(self, "thumbnail", os.fspath(self.thumbnail))
        elif isinstance(self.thumbnail, (bytearray, memoryview)):
            object.__setattr__(self, "thumbnail", bytes(self.thumbnail))
        if self.thumbnail is not None and not isinstance(self.thumbnail, (bytes, str)):
            raise AlertInputError(key, f"thumbnail must be bytes or a path, got {type(self.thumbnail).__name__}")

    @property
    def clip_key(self) -> str:
        return f"{self.stream_id}:{self.seq}"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | Any) -> ScoredClip:
        """Build from a verdict as a mapping; extra keys are ignored.

        ``stream_id``/``seq`` may be omitted when ``clip_key`` is given; when both are given they must agree.
        The field names of the bus's verdict message (``VerdictMessage.model_dump()``) are understood too:
        ``class_name`` for prediction, ``softmax_max`` for softmax, ``log_likelihoods`` ``{layer: {density: v}}``
        as layer scores ``"layer/density"``, the first/last of ``pts`` as clip start/end, and
        ``timestamps["density"]`` as scored_at. A pydantic message itself may be passed (``model_dump`` is used).
        """
        if not isinstance(data, Mapping) and callable(getattr(data, "model_dump", None)):
            data = data.model_dump()
        if not isinstance(data, Mapping):
            raise AlertInputError(type(data).__name__, "a scored clip must be a mapping of verdict fields")
        clip_key = data.get("clip_key")
        name = str(clip_key or f"{data.get('stream_id')}:{data.get('seq')}")
        stream_id, seq = data.get("stream_id"), data.get("seq")
        if clip_key is not None:
            parsed_stream, sep, parsed_seq = str(clip_key).rpartition(":")
            if not sep or not parsed_seq.isdigit():
                raise AlertInputError(name, "clip_key must look like 'stream_id:seq'")
            if stream_id is None and seq is None:
                stream_id, seq = parsed_stream, int(parsed_seq)
            elif f"{stream_id}:{seq}" != clip_key:
                raise AlertInputError(name, f"clip_key does not match stream_id {stream_id!r} and seq {seq!r}")
        fields = {k: data.get(k) for k in ("verdict", "fused_score", "p_value", "clip_start", "clip_end", "scored_at")}
        pts = data.get("pts")
        if isinstance(pts, (list, tuple)) and pts:
            fields["clip_start"] = _pick(fields["clip_start"], pts[0])
            fields["clip_end"] = _pick(fields["clip_end"], pts[-1])
        if isinstance(data.get("timestamps"), Mapping):
            fields["scored_at"] = _pick(fields["scored_at"], data["timestamps"].get("density"))
        missing = [k for k, v in fields.items() if v is None and k != "p_value"]
        if stream_id is None or seq is None:
            missing[:0] = ["stream_id/seq or clip_key"]
        if missing:
            raise AlertInputError(name, f"missing field(s): {', '.join(missing)}")
        prediction = _pick(data.get("class_name"), data.get("prediction"))
        if isinstance(prediction, int) and not isinstance(prediction, bool):
            prediction = str(prediction)  # a class index without its name
        fields["prediction"] = prediction
        fields["softmax"] = _pick(data.get("softmax"), data.get("softmax_max"))
        nested = data.get("log_likelihoods")
        if data.get("layer_scores") is None and isinstance(nested, Mapping):
            fields["layer_scores"] = _flatten_scores(nested)
        optional = {k: data[k] for k in ("reasons", "layer_scores", "thumbnail") if data.get(k) is not None}
        return cls(stream_id=stream_id, seq=seq, **{**fields, **optional})


def _flatten_scores(nested: Mapping[str, Any]) -> dict[str, Any]:
    """``{layer: {density: v}}`` as ``{"layer/density": v}``; a plain ``{layer: v}`` entry stays ``layer``."""
    flat: dict[str, Any] = {}
    for layer, row in nested.items():
        if isinstance(row, Mapping):
            flat.update({f"{layer}/{density}": v for density, v in row.items()})
        else:
            flat[str(layer)] = row
    return flat


def _pick(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _finite(key: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AlertInputError(key, f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise AlertInputError(key, f"{name} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ThumbnailRef:
    """Where an alert's thumbnail is: a path/URI and/or the digest of JPEG bytes carried along (not in the body)."""

    uri: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, thumbnail: bytes | str | None) -> ThumbnailRef | None:
        if thumbnail is None:
            return None
        if isinstance(thumbnail, bytes):
            return cls(sha256=hashlib.sha256(thumbnail).hexdigest(), size_bytes=len(thumbnail), data=thumbnail)
        return cls(uri=thumbnail)

    def to_body(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "size_bytes": self.size_bytes, "media_type": "image/jpeg"}


@dataclass(frozen=True)
class Smoothing:
    """Why the rules fired: `hits` of the last `n` clips (the listed seqs) had the alert's kind; `k` were needed."""

    k: int
    n: int
    seqs: tuple[int, ...]

    def to_body(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "hits": len(self.seqs), "seqs": list(self.seqs)}


@dataclass(frozen=True)
class Alert:
    """An alert raised by the clip that completed the rule; ``idempotency_key`` is ``"stream_id:seq:kind"``."""

    kind: str
    clip: ScoredClip
    smoothing: Smoothing
    thumbnail: ThumbnailRef | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_clip(cls, clip: ScoredClip, kind: str, smoothing: Smoothing | None = None) -> Alert:
        smoothing = smoothing or Smoothing(k=1, n=1, seqs=(clip.seq,))
        return cls(kind=kind, clip=clip, smoothing=smoothing, thumbnail=ThumbnailRef.of(clip.thumbnail))

    @property
    def idempotency_key(self) -> str:
        return f"{self.clip.stream_id}:{self.clip.seq}:{self.kind}"

    @property
    def stream_id(self) -> str:
        return self.clip.stream_id

    @property
    def seq(self) -> int:
        return self.clip.seq

    def to_body(self) -> dict[str, Any]:
        """The JSON object of ``alert.schema.json``: the JSONL line and the webhook body."""
        clip = self.clip
        return {
            "type": BODY_TYPE,
            "schema_version": self.schema_version,
            "idempotency_key": self.idempotency_key,
            "kind": self.kind,
            "stream_id": clip.stream_id,
            "seq": clip.seq,
            "clip_key": clip.clip_key,
            "verdict": {
                "verdict": clip.verdict,
                "reasons": list(clip.reasons),
                "fused_score": clip.fused_score,
                "p_value": clip.p_value,
                "prediction": clip.prediction,
                "softmax": clip.softmax,
                "layer_scores": dict(clip.layer_scores),
            },
            "timestamps": {"clip_start": clip.clip_start, "clip_end": clip.clip_end, "scored_at": clip.scored_at},
            "smoothing": self.smoothing.to_body(),
            "thumbnail": self.thumbnail.to_body() if self.thumbnail else None,
        }

    def to_json_bytes(self) -> bytes:
        """The canonical body bytes (what is signed and sent)."""
        return canonical_json(self.to_body())


def store_thumbnail(alert: Alert, directory: str | os.PathLike) -> Alert:
    """Write the alert's thumbnail bytes to ``<directory>/<sha256>.jpg`` and return the alert with that path as uri.

    Content-addressed and written atomically, so storing the same thumbnail twice (a redelivered clip) is harmless.
    Alerts without thumbnail bytes are returned unchanged.
    """
    ref = alert.thumbnail
    if ref is None or ref.data is None:
        return alert
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{ref.sha256}.jpg"
    if not target.exists():
        atomic_write(target, ref.data, durable=True)
    return replace(alert, thumbnail=replace(ref, uri=str(target)))
