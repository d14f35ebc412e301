"""Message schema: round trips of every type, zero-copy array views, and every way a payload can be rejected."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from pipeline.stream.messages import (
    DEFAULT_MAX_BYTES,
    MAX_THUMBNAIL_BYTES,
    SCHEMA_VERSION,
    ClipMessage,
    EmbeddingMessage,
    HealthMessage,
    MessageError,
    VerdictMessage,
    clip_key,
    decode,
    encode,
    split_clip_key,
)
from pipeline.video import Clip, Health, StreamEvent

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(60)) + b"\xff\xd9"


def make_clip(t: int = 4, h: int = 6, w: int = 5, **extra) -> ClipMessage:
    frames = np.random.default_rng(0).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)
    return ClipMessage.from_array(frames, stream_id="cam-1", seq=7, first_frame=112, last_frame=112 + 2 * (t - 1),
                                  pts=[3.0 + 0.08 * i for i in range(t)], **extra)


def make_embedding(**extra) -> EmbeddingMessage:
    rng = np.random.default_rng(1)
    fields = dict(stream_id="cam-1", seq=7, pts=[3.0, 3.08], model_id="c3d-ucf101", prediction=12,
                  class_name="Biking", softmax_max=0.93, thumbnail=JPEG, label="Biking", source="bikes.mp4")
    fields.update(extra)
    return EmbeddingMessage.from_arrays({"conv5": rng.normal(size=32), "fc6": rng.normal(size=(2, 4))}, **fields)


def make_verdict(**extra) -> VerdictMessage:
    fields = dict(stream_id="cam-1", seq=7, pts=[3.0], model_id="c3d-ucf101",
                  log_likelihoods={"conv5": {"tied": -812.5, "gmm": float("-inf")}, "fc6": {"tied": -90.25}},
                  fused_score=-3.5, p_value=0.002, verdict="novel", reasons=["conv5 tied below 0.1% quantile"],
                  prediction=12, class_name="Biking", softmax_max=0.4, thumbnail=JPEG,
                  timestamps={"decoded": 1.5, "scored": 2.25})
    fields.update(extra)
    return VerdictMessage(**fields)


def make_health(**extra) -> HealthMessage:
    return HealthMessage(**{"stream_id": "cam-1", "state": "stalled", "detail": "no frame for 5.0 s",
                            "time": 1234.5, **extra})


FACTORIES = {"clip": make_clip, "embedding": make_embedding, "verdict": make_verdict, "health": make_health}


def body_of(message) -> dict:
    """The raw msgpack map of a message, to tamper with."""
    return msgpack.unpackb(encode(message), raw=False)


def pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_every_message_type_round_trips(kind):
    message = FACTORIES[kind]()
    payload = encode(message)
    body = msgpack.unpackb(payload, raw=False)
    assert body["v"] == SCHEMA_VERSION and body["type"] == kind
    decoded = decode(payload)
    assert type(decoded) is type(message)
    assert decoded == message
    assert decode(payload, expect=type(message)) == message


def test_clip_array_is_a_zero_copy_read_only_view():
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    message = decode(encode(ClipMessage.from_array(frames, stream_id="s", seq=0, first_frame=0, last_frame=2,
                                                   pts=[0.0, 0.04, 0.08])))
    array = message.array
    np.testing.assert_array_equal(array, frames)
    assert array.shape == (3, 4, 5, 3) and array.dtype == np.uint8
    assert array.ctypes.data == np.frombuffer(message.frames, dtype=np.uint8).ctypes.data
    assert not array.flags.writeable


def test_clip_from_a_real_video_clip_keeps_its_key():
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    clip = Clip(stream_id="cam-9", seq=5, frames=frames, first_frame=80, last_frame=81, pts=np.array([3.2, 3.24]))
    message = decode(encode(ClipMessage.from_clip(clip, label="Diving", source="/data/v.avi")))
    assert message.key == clip.key == "cam-9:5"
    assert message.pts == [3.2, 3.24] and message.label == "Diving" and message.source == "/data/v.avi"
    np.testing.assert_array_equal(message.array, frames)


def test_clip_from_array_rejects_non_uint8_frames():
    with pytest.raises(MessageError, match=r"clip cam:3: frames must be a \(T, H, W, C\) uint8 array, got float32"):
        ClipMessage.from_array(np.zeros((2, 4, 4, 3), np.float32), stream_id="cam", seq=3, first_frame=0,
                               last_frame=1, pts=[0.0, 0.1])


def test_embedding_features_are_float32_views():
    message = decode(encode(make_embedding()))
    conv5, fc6 = message.feature("conv5"), message.feature("fc6")
    assert conv5.dtype == np.float32 and conv5.shape == (32,) and fc6.shape == (8,)
    expected = np.random.default_rng(1).normal(size=32).astype(np.float32)
    np.testing.assert_array_equal(conv5, expected)
    assert set(message.feature_arrays()) == {"conv5", "fc6"}
    with pytest.raises(KeyError, match=r"no features for layer 'pool3' in cam-1:7 \(have \['conv5', 'fc6'\]\)"):
        message.feature("pool3")


def test_health_from_a_real_stream_event():
    event = StreamEvent("cam-2", Health.RECONNECTING, detail="connection refused", attempt=2, delay=0.5)
    message = decode(encode(HealthMessage.from_event(event)))
    assert (message.stream_id, message.state, message.detail, message.time) == \
        ("cam-2", "reconnecting", "connection refused", event.time)


def test_keys_and_timestamps():
    verdict = make_verdict(stream_id="rtsp://10.0.0.5:554/cam", seq=41)
    assert verdict.key == "rtsp://10.0.0.5:554/cam:41"
    assert split_clip_key(verdict.key) == ("rtsp://10.0.0.5:554/cam", 41)
    assert clip_key("cam", 3) == "cam:3"
    with pytest.raises(MessageError, match="malformed clip key 'cam'"):
        split_clip_key("cam")
    stamped = make_clip().with_timestamp("decoded", 10.0).with_timestamp("classified", 11.5)
    assert decode(encode(stamped)).timestamps == {"decoded": 10.0, "classified": 11.5}


def _tamper(kind: str, **changes) -> bytes:
    body = body_of(FACTORIES[kind]())
    for name, value in changes.items():
        if value is _DROP:
            body.pop(name)
        else:
            body[name] = value
    return pack(body)


_DROP = object()
clip_body = body_of(make_clip())
embedding_body = body_of(make_embedding())

BAD_PAYLOADS = {
    "not msgpack": (b"\xc1\xc1\xc1", "not msgpack"),
    "truncated": (encode(make_clip())[:-7], "not msgpack"),
    "trailing bytes": (encode(make_health()) + b"\x00", "trailing bytes after the msgpack object"),
    "pickle": (pickle.dumps({"v": 1, "type": "health"}), "not"),
    "not a map": (pack([1, 2, 3]), "expected a msgpack map, got list"),
    "non-string map key": (pack({1: "x"}), "not msgpack"),
    "missing version": (_tamper("health", v=_DROP), "missing schema version field 'v'"),
    "future version": (_tamper("health", v=2), "unsupported schema version 2 (this build reads v1)"),
    "version as text": (_tamper("health", v="1"), "unsupported schema version '1'"),
    "version as bool": (_tamper("health", v=True), "unsupported schema version True"),
    "missing type": (_tamper("health", type=_DROP), "missing message type field 'type'"),
    "unknown type": (_tamper("health", type="frame"), "unknown message type 'frame' (known: clip,"),
    "type not text": (_tamper("health", type=5), "unknown message type 5"),
    "missing field": (_tamper("clip", stream_id=_DROP), "invalid clip message: stream_id: required key is missing"),
    "extra field": (_tamper("health", colour="red"), "invalid health message: colour: unknown key"),
    "seq as text": (_tamper("clip", seq="7"), "seq: Input should be a valid integer"),
    "seq as bool": (_tamper("clip", seq=True), "seq: Input should be a valid integer"),
    "negative seq": (_tamper("clip", seq=-1), "seq: Input should be greater than or equal to 0"),
    "empty stream id": (_tamper("clip", stream_id=""), "stream_id: String should have at least 1"),
    "pts entry as text": (_tamper("clip", pts=[0.0, "x", 0.2, 0.3]), "pts.1: Input should be a valid"),
    "frames as text": (_tamper("clip", frames="abc"), "frames: Input should be a valid bytes"),
    "frames vs shape": (_tamper("clip", frames=clip_body["frames"][:-1]),
                        "frames hold 359 bytes but shape (4, 6, 5, 3) needs 360"),
    "shape rank": (_tamper("clip", shape=[4, 6, 5]), "shape.3: missing"),
    "zero in shape": (_tamper("clip", shape=[0, 6, 5, 3]), "shape.0: Input should be greater than"),
    "pts vs frames": (_tamper("clip", pts=[0.0]), "1 pts for 4 frames"),
    "frame side": (_tamper("clip", shape=[4, 9000, 9000, 3]), "frame size 9000x9000 exceeds the largest side of 8192"),
    "aspect ratio": (_tamper("clip", shape=[4, 2, 17, 3]), "frame size 2x17 has an aspect ratio beyond 8:1"),
    "channels": (_tamper("clip", shape=[4, 6, 5, 5]), "frames have 5 channels, at most 4 allowed"),
    "frame range": (_tamper("clip", first_frame=200), "last_frame 118 < first_frame 200"),
    "dtype": (_tamper("clip", dtype="float32"), "dtype: Input should be 'uint8'"),
    "ext type": (_tamper("health", time=msgpack.ExtType(5, b"x")), "time: Input should be a valid number"),
    "feature bytes vs dim": (_tamper("embedding", features={"conv5": {"data": b"\x00" * 12, "dim": 4}}),
                             "feature data holds 12 bytes but dim 4 needs 16"),
    "no features": (_tamper("embedding", features={}), "features: Dictionary should have at least 1"),
    "softmax above one": (_tamper("embedding", softmax_max=1.5), "softmax_max: Input should be less"),
    "thumbnail not jpeg": (_tamper("embedding", thumbnail=b"\x89PNG...."), "thumbnail is not a JPEG"),
    "thumbnail too big": (_tamper("embedding", thumbnail=b"\xff\xd8\xff" + bytes(MAX_THUMBNAIL_BYTES)),
                          f"thumbnail of {MAX_THUMBNAIL_BYTES + 3} bytes exceeds {MAX_THUMBNAIL_BYTES}"),
    "unknown verdict": (_tamper("verdict", verdict="suspicious"), "verdict: Input should be 'normal',"),
    "nested log-likelihood": (_tamper("verdict", log_likelihoods={"conv5": {"tied": "low"}}),
                              "log_likelihoods.conv5.tied: Input should be a valid number"),
    "unknown health state": (_tamper("health", state="exploded"), "state: Input should be 'up',"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_bad_payload_raises_one_line_message_error(case):
    payload, reason = BAD_PAYLOADS[case]
    with pytest.raises(MessageError) as caught:
        decode(payload)
    text = str(caught.value)
    assert reason in text
    assert "\n" not in text
    assert isinstance(caught.value, ValueError)


def test_a_sliver_clip_is_refused_by_the_schema_before_anything_resizes_it():
    """16 x 1 x 65536 frames (3 MiB) would be scaled to 128 x 8388608 by a short-side resize: 20 GB per clip."""
    sliver = np.zeros((16, 1, 65536, 3), np.uint8)
    body = {**clip_body, "shape": list(sliver.shape), "pts": [0.0] * 16, "frames": sliver.tobytes()}
    with pytest.raises(MessageError, match=r"^invalid clip message: frame size 1x65536 exceeds the largest side"):
        decode(pack(body))
    with pytest.raises(MessageError, match=r"^clip cam:3: frame size 1x4096 has an aspect ratio beyond 8:1"):
        ClipMessage.from_array(sliver[:, :, :4096], stream_id="cam", seq=3, first_frame=0, last_frame=15,
                               pts=[0.0] * 16)
    wide = np.zeros((2, 10, 80, 3), np.uint8)  # exactly 8:1 is allowed
    assert ClipMessage.from_array(wide, stream_id="cam", seq=0, first_frame=0, last_frame=1,
                                  pts=[0.0, 0.1]).shape == (2, 10, 80, 3)


def test_several_problems_are_counted_on_one_line():
    with pytest.raises(MessageError, match=r"invalid clip message: seq: .* \(and 2 more problems\)$"):
        decode(_tamper("clip", seq="x", first_frame="y", last_frame="z"))


def test_decode_checks_the_expected_type_and_names_the_origin():
    with pytest.raises(MessageError, match=r"^clips#12-0: expected a clip message, got health$"):
        decode(encode(make_health()), expect=ClipMessage, origin="clips#12-0")
    with pytest.raises(MessageError, match=r"^clips#13-0: payload must be bytes, got str$"):
        decode("hello", origin="clips#13-0")


def test_size_limit_on_encode_and_decode():
    message = make_clip(t=8, h=32, w=32)
    payload = encode(message)
    assert len(payload) > 8 * 32 * 32 * 3
    with pytest.raises(MessageError, match=rf"clip message cam-1:7: encoded size {len(payload)} bytes exceeds "
                                           rf"the limit of 20000 bytes"):
        encode(message, max_bytes=20_000)
    with pytest.raises(MessageError, match=rf"payload of {len(payload)} bytes exceeds the limit of 20000 bytes"):
        decode(payload, max_bytes=20_000)
    assert decode(payload, max_bytes=len(payload)) == message


def test_default_limit_is_16_mib():
    assert DEFAULT_MAX_BYTES == 16 * 2**20
    frames = np.zeros((16, 512, 700, 3), np.uint8)  # 17.2 MB
    big = ClipMessage.from_array(frames, stream_id="s", seq=0, first_frame=0, last_frame=15, pts=[0.0] * 16)
    with pytest.raises(MessageError, match="exceeds the limit of 16777216 bytes"):
        encode(big)
    assert decode(encode(big, max_bytes=20 * 2**20), max_bytes=20 * 2**20).shape == (16, 512, 700, 3)


def test_encode_refuses_foreign_objects():
    with pytest.raises(MessageError, match="cannot encode dict: not a clipwatch message"):
        encode({"v": 1, "type": "clip"})
