"""The messages that flow between stages, and their msgpack wire format.

Every payload is one msgpack map ``{"v": SCHEMA_VERSION, "type": <name>, **fields}``. Decoding validates it fully
(version, type, every field's type and range, cross-field consistency such as frame bytes vs shape) and raises
`MessageError` with a one-line reason, so a worker can dead-letter a bad payload instead of crashing. Pickle is never
used: a payload from the bus is untrusted input. Arrays travel as raw little-endian bytes plus their shape and are
read back as zero-copy numpy views.

One clip key, ``"stream_id:seq"``, follows a clip from decoder to sink (`.key` on every per-clip message).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgpack
import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBytes,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from pipeline.errors import ClipwatchError, validation_problem

SCHEMA_VERSION = 1
"""Wire schema version, the ``v`` field of every payload; bump it on any incompatible field change."""

DEFAULT_MAX_BYTES = 16 * 2**20
"""Largest encoded message accepted by `encode` / `decode` unless told otherwise (16 MiB)."""

MAX_THUMBNAIL_BYTES = 256 * 2**10
"""Largest inline JPEG thumbnail (256 KiB): thumbnails are previews, not frames."""

MAX_FRAME_SIDE = 8192
"""Largest frame height or width a clip message may carry (8K video is 7680 wide)."""

MAX_ASPECT_RATIO = 8
"""Longest frame side over shortest allowed in a clip message: resizing the short side of a 1 x 65536 frame to
128 pixels would otherwise ask for gigabytes (see `pipeline.video.preprocess.MAX_RESIZED_PIXELS`)."""

MAX_CHANNELS = 4
"""Most colour channels of a clip's frames (grey, RGB, RGBA)."""

VerdictLabel = Literal["normal", "novel", "adversarial"]
HealthState = Literal["up", "down", "stalled", "reconnecting", "ended"]

Name = Annotated[StrictStr, Field(min_length=1, max_length=1024)]
Count = Annotated[StrictInt, Field(ge=0)]
Size = Annotated[StrictInt, Field(ge=1)]
Probability = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Timestamps = dict[Name, StrictFloat]

M = TypeVar("M", bound="Message")
R = TypeVar("R", bound="ClipRef")


class MessageError(ClipwatchError, ValueError):
    """A payload that is not a valid clipwatch message; the text is a one-line reason."""


class Message(BaseModel):
    """Base of all messages: immutable, no unknown fields, strict scalar types."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TYPE: ClassVar[str] = ""
    OMIT_WHEN_EMPTY: ClassVar[tuple[str, ...]] = ()
    """Optional fields added after version 1: left out of the payload when empty, so that readers of the same
    schema version that predate them still accept what needs none of them."""


class ClipRef(Message):
    """Fields shared by everything about one clip: where it comes from and when."""

    stream_id: Name
    seq: Count
    pts: list[StrictFloat] = Field(description="presentation time (s) of each clip frame")
    label: StrictStr | None = Field(None, description="ground-truth class name, for batch scoring")
    source: StrictStr | None = Field(None, description="file or URI the clip was read from")
    timestamps: Timestamps = Field(default_factory=dict, description="wall-clock time per stage")

    @property
    def key(self) -> str:
        """The clip key ``"stream_id:seq"`` that every stage is idempotent on."""
        return clip_key(self.stream_id, self.seq)

    def with_timestamp(self: R, stage: str, when: float | None = None) -> R:
        """A copy with ``timestamps[stage] = when`` (default now), to trace a clip's latency stage by stage."""
        stamps = {**self.timestamps, stage: time.time() if when is None else float(when)}
        return self.model_copy(update={"timestamps": stamps})


def _check_thumbnail(thumbnail: bytes | None) -> None:
    if thumbnail is None:
        return
    if len(thumbnail) > MAX_THUMBNAIL_BYTES:
        raise ValueError(f"thumbnail of {len(thumbnail)} bytes exceeds {MAX_THUMBNAIL_BYTES}")
    if not thumbnail.startswith(b"\xff\xd8\xff"):
        raise ValueError("thumbnail is not a JPEG (no FF D8 FF marker)")


def frame_shape_problem(shape: Sequence[int]) -> str | None:
    """Why (T, H, W, C) frames may not travel in a clip message (side, aspect ratio, channels), or None."""
    _, height, width, channels = shape
    if max(height, width) > MAX_FRAME_SIDE:
        return f"frame size {height}x{width} exceeds the largest side of {MAX_FRAME_SIDE} pixels"
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        return (f"frame size {height}x{width} has an aspect ratio beyond {MAX_ASPECT_RATIO}:1, "
                "too extreme to resize for a model")
    if channels > MAX_CHANNELS:
        return f"frames have {channels} channels, at most {MAX_CHANNELS} allowed"
    return None


class ClipMessage(ClipRef):
    """T decoded frames of one stream: ``frames`` holds ``shape = (T, H, W, C)`` uint8 values, C-contiguous.

    Frame sides are at most `MAX_FRAME_SIDE`, their aspect ratio at most `MAX_ASPECT_RATIO`: a consumer's memory per
    clip is bounded by the message, whatever resizing it does.
    """

    TYPE: ClassVar[str] = "clip"

    first_frame: Count
    last_frame: Count
    shape: tuple[Size, Size, Size, Size]
    dtype: Literal["uint8"] = "uint8"
    frames: StrictBytes

    @model_validator(mode="after")
    def _consistent(self) -> ClipMessage:
        if self.last_frame < self.first_frame:
            raise ValueError(f"last_frame {self.last_frame} < first_frame {self.first_frame}")
        if len(self.pts) != self.shape[0]:
            raise ValueError(f"{len(self.pts)} pts for {self.shape[0]} frames")
        problem = frame_shape_problem(self.shape)
        if problem:
            raise ValueError(problem)
        expected = math.prod(self.shape)
        if len(self.frames) != expected:
            raise ValueError(f"frames hold {len(self.frames)} bytes but shape {self.shape} needs {expected}")
        return self

    @property
    def array(self) -> np.ndarray:
        """The frames as a read-only (T, H, W, C) uint8 view of the message bytes (no copy)."""
        return np.frombuffer(self.frames, dtype=np.uint8).reshape(self.shape)

    @classmethod
    def from_array(cls, frames: np.ndarray, *, stream_id: str, seq: int, first_frame: int, last_frame: int,
                   pts: Sequence[float], **metadata: Any) -> ClipMessage:
        """Build from a (T, H, W, C) uint8 array; `metadata` sets label, source or timestamps."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
            got = f"{frames.dtype} array of shape {frames.shape}" if isinstance(frames, np.ndarray) else type(frames)
            raise MessageError(f"clip {stream_id}:{seq}: frames must be a (T, H, W, C) uint8 array, got {got}")
        shape = tuple(int(s) for s in frames.shape)
        problem = frame_shape_problem(shape)  # before copying the frames
        if problem:
            raise MessageError(f"clip {stream_id}:{seq}: {problem}")
        try:
            return cls(stream_id=stream_id, seq=int(seq), first_frame=int(first_frame), last_frame=int(last_frame),
                       pts=[float(p) for p in pts], shape=shape, frames=np.ascontiguousarray(frames).tobytes(),
                       **metadata)
        except ValidationError as error:
            raise MessageError(f"clip {stream_id}:{seq}: invalid clip message: {validation_problem(error)}") from None

    @classmethod
    def from_clip(cls, clip: Any, **metadata: Any) -> ClipMessage:
        """Build from a `pipeline.video.Clip` (or anything with its attributes)."""
        return cls.from_array(clip.frames, stream_id=clip.stream_id, seq=clip.seq, first_frame=clip.first_frame,
                              last_frame=clip.last_frame, pts=clip.pts, **metadata)


class LayerFeatures(Message):
    """One layer's pooled feature vector: ``dim`` little-endian float32 values."""

    data: StrictBytes
    dim: Size

    @model_validator(mode="after")
    def _consistent(self) -> LayerFeatures:
        if len(self.data) != 4 * self.dim:
            raise ValueError(f"feature data holds {len(self.data)} bytes but dim {self.dim} needs {4 * self.dim}")
        return self

    @property
    def array(self) -> np.ndarray:
        """The vector as a read-only (dim,) float32 view (no copy)."""
        return np.frombuffer(self.data, dtype="<f4")

    @classmethod
    def from_array(cls, vector: np.ndarray) -> LayerFeatures:
        flat = np.ascontiguousarray(np.asarray(vector).reshape(-1), dtype="<f4")
        return cls(data=flat.tobytes(), dim=int(flat.size))


class EmbeddingMessage(ClipRef):
    """The classifier's output for one clip: prediction, confidence and the tapped layers' feature vectors."""

    TYPE: ClassVar[str] = "embedding"

    model_id: Name
    prediction: Count
    class_name: StrictStr
    softmax_max: Probability
    features: dict[Name, LayerFeatures] = Field(min_length=1)
    thumbnail: StrictBytes | None = Field(None, description="small JPEG of the clip, for the sink")
    evidence: dict[Name, StrictFloat] = Field(
        default_factory=dict, description="scores besides the features that the bundle fuses "
        "(pipeline.detect.evidence), computed in the classifier's forward pass")
    scene: LayerFeatures | None = Field(
        None, description="the clip's picture statistics (pipeline.detect.camera.SCENE_FEATURES), for per-camera "
                          "normal models")
    OMIT_WHEN_EMPTY: ClassVar[tuple[str, ...]] = ("evidence", "scene")

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingMessage:
        _check_thumbnail(self.thumbnail)
        return self

    def feature(self, layer: str) -> np.ndarray:
        """One layer's (dim,) float32 vector (zero-copy view); KeyError names the layers present."""
        if layer not in self.features:
            raise KeyError(f"no features for layer {layer!r} in {self.key} (have {sorted(self.features)})")
        return self.features[layer].array

    def feature_arrays(self) -> dict[str, np.ndarray]:
        return {layer: item.array for layer, item in self.features.items()}

    @classmethod
    def from_arrays(cls, features: Mapping[str, np.ndarray], **fields: Any) -> EmbeddingMessage:
        """Build from ``{layer: vector}`` arrays (any float dtype; flattened to float32) plus the other fields."""
        return cls(features={layer: LayerFeatures.from_array(v) for layer, v in features.items()}, **fields)


class VerdictMessage(ClipRef):
    """The density stage's judgement of one clip, with the evidence behind it."""

    TYPE: ClassVar[str] = "verdict"

    model_id: Name
    log_likelihoods: dict[Name, dict[Name, StrictFloat]] = Field(
        description="{layer: {density: log p(x)}}, and the evidence the bundle fuses the same way, e.g. "
                    "{'border': {'consistency': score}}")
    fused_score: StrictFloat
    p_value: Probability | None = Field(None, description="calibrated tail probability; None if uncalibrated")
    verdict: VerdictLabel
    reasons: list[StrictStr] = Field(default_factory=list)
    prediction: Count
    class_name: StrictStr
    softmax_max: Probability
    thumbnail: StrictBytes | None = None
    camera_p_values: dict[Name, Probability] = Field(
        default_factory=dict, description="the camera's normal model, once warmed up: a p-value per view and "
        "'camera' (pipeline.detect.camera); empty while it warms up or where none is configured")
    OMIT_WHEN_EMPTY: ClassVar[tuple[str, ...]] = ("camera_p_values",)

    @model_validator(mode="after")
    def _consistent(self) -> VerdictMessage:
        _check_thumbnail(self.thumbnail)
        return self


class HealthMessage(Message):
    """A change in a stream's health (mirrors `pipeline.video.StreamEvent`)."""

    TYPE: ClassVar[str] = "health"

    stream_id: Name
    state: HealthState
    detail: StrictStr = ""
    time: StrictFloat = Field(default_factory=time.time)

    @classmethod
    def from_event(cls, event: Any) -> HealthMessage:
        """Build from a `pipeline.video.StreamEvent`."""
        state = getattr(event.health, "value", event.health)
        return cls(stream_id=event.stream_id, state=state, detail=event.detail, time=float(event.time))


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (ClipMessage, EmbeddingMessage, VerdictMessage, HealthMessage)
}


def clip_key(stream_id: str, seq: int) -> str:
    """``"stream_id:seq"``; stream ids may themselves contain ':' (URIs), so parse with `split_clip_key`."""
    return f"{stream_id}:{seq}"


def split_clip_key(key: str) -> tuple[str, int]:
    """Inverse of `clip_key`: splits at the last ':'."""
    stream_id, sep, seq = key.rpartition(":")
    if not sep or not stream_id or not seq.isdigit():
        raise MessageError(f"malformed clip key {key!r}: expected 'stream_id:seq'")
    return stream_id, int(seq)


def encode(message: Message, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The msgpack payload of `message`; MessageError if it is larger than `max_bytes`."""
    if not isinstance(message, Message) or message.TYPE not in MESSAGE_TYPES:
        raise MessageError(f"cannot encode {type(message).__name__}: not a clipwatch message")
    omit = {name for name in message.OMIT_WHEN_EMPTY if not getattr(message, name)}
    body = {"v": SCHEMA_VERSION, "type": message.TYPE, **message.model_dump(exclude=omit)}
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > max_bytes:
        raise MessageError(f"{_describe(message)}: encoded size {len(payload)} bytes exceeds the limit of "
                           f"{max_bytes} bytes")
    return payload


def decode(payload: bytes | bytearray | memoryview, *, expect: type[M] | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES, origin: str | None = None) -> M:
    """Parse and validate a payload; `expect` also checks its type. `origin` (topic, entry id) prefixes errors."""
    prefix = f"{origin}: " if origin else ""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageError(f"{prefix}payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise MessageError(f"{prefix}payload of {len(payload)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=max_bytes,
                               max_str_len=max_bytes)
    except msgpack.ExtraData:
        raise MessageError(f"{prefix}not a message: trailing bytes after the msgpack object") from None
    except Exception as error:  # msgpack raises many kinds (ValueError, FormatError, StackError, UnicodeError)
        raise MessageError(f"{prefix}not msgpack: {type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(body, dict):
        raise MessageError(f"{prefix}not a message: expected a msgpack map, got {type(body).__name__}")
    if "v" not in body:
        raise MessageError(f"{prefix}missing schema version field 'v'")
    version = body.pop("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MessageError(f"{prefix}unsupported schema version {version!r} (this build reads v{SCHEMA_VERSION})")
    kind = body.pop("type", None)
    if kind is None:
        raise MessageError(f"{prefix}missing message type field 'type'")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"{prefix}unknown message type {kind!r} (known: {', '.join(sorted(MESSAGE_TYPES))})")
    if expect is not None and cls is not expect:
        raise MessageError(f"{prefix}expected a {expect.TYPE} message, got {kind}")
    try:
        return cls.model_validate(body)
    except ValidationError as error:
        raise MessageError(f"{prefix}invalid {kind} message: {validation_problem(error)}") from None


def _describe(message: Message) -> str:
    key = getattr(message, "key", None) or getattr(message, "stream_id", "")
    return f"{message.TYPE} message {key}".rstrip()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "malformed data"
