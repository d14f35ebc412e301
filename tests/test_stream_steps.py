"""The steps of `pipeline.stream.steps`, without any bus: decode, classify (and its batching), score, record."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pipeline_helpers import verdict
from videos import read_indices, write_indexed_video
from webhook_server import Reply, WebhookServer

import pipeline.stream.steps.classify as classify
from pipeline.alerts import AlertRules, JsonlSink, ScoredClip, WebhookSink, verify_signature
from pipeline.config import SourceConfig
from pipeline.detect import Detector, DetectorBundle, model_input
from pipeline.detect.features import extract_from_tensors
from pipeline.models import Preprocessing, load_model
from pipeline.stream.messages import ClipMessage, VerdictMessage
from pipeline.stream.reorder import ReorderBuffer
from pipeline.stream.steps import Rejected
from pipeline.stream.steps.classify import ClassifierStep
from pipeline.stream.steps.decode import clip_message, file_clip_messages, plan_streams
from pipeline.stream.steps.record import SinkStep, VerdictLog, scored_clip
from pipeline.stream.steps.score import DensityStep
from pipeline.video import Clip, ClipSplitter, iter_file_clips
from workers.loop import gather_batch

PREP = Preprocessing(clip_len=8, frame_step=1, short_side=32, crop=32, mean=(0.45,) * 3, std=(0.225,) * 3)


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory):
    return write_indexed_video(tmp_path_factory.mktemp("decoder") / "cam.mp4", 44, width=64, height=48)


@pytest.fixture(scope="module")
def clip_batch(tiny_dataset, tiny_bundle):
    """Real clips of three synthetic videos (three streams), as the decoder publishes them."""
    videos = sorted((tiny_dataset / "Grow").glob("*.avi"))[:2] + sorted((tiny_dataset / "novel").rglob("*.avi"))[:1]
    splitter = ClipSplitter(PREP.clip_len, PREP.clip_len)
    return [message for index, path in enumerate(videos)
            for message in file_clip_messages(path, splitter, f"s{index}", short_side=PREP.short_side)]


@pytest.fixture(scope="module")
def classifier(tiny_bundle):
    step = ClassifierStep.from_detector(Detector.load(tiny_bundle))
    yield step
    step.close()


def test_decoder_step_reads_every_clip_of_a_real_file_in_order(indexed_video):
    splitter = ClipSplitter(8, 8)
    raw = list(file_clip_messages(indexed_video, splitter, "cam"))
    assert [m.seq for m in raw] == [0, 1, 2, 3, 4]
    assert [m.key for m in raw] == [f"cam:{i}" for i in range(5)]
    for message in raw:
        assert message.shape == (8, 48, 64, 3)
        assert read_indices(message.array) == list(range(message.first_frame, message.last_frame + 1))
        np.testing.assert_allclose(message.pts, np.arange(message.first_frame, message.last_frame + 1) / 25.0)
        assert message.source == str(indexed_video)
    shifted = list(file_clip_messages(indexed_video, splitter, "cam", seq_offset=1000))
    assert [m.seq for m in shifted] == [1000, 1001, 1002, 1003, 1004]


def test_decoder_resize_gives_the_classifier_bit_identical_input(indexed_video):
    splitter = ClipSplitter(8, 8)
    resized = list(file_clip_messages(indexed_video, splitter, "cam", short_side=32))
    originals = [clip.frames for clip in iter_file_clips(indexed_video, splitter, "cam")]
    assert resized[0].shape == (8, 32, 43, 3)
    assert len(resized[0].frames) < len(originals[0].tobytes()) / 2
    for message, frames in zip(resized, originals, strict=True):
        assert torch.equal(model_input(np.array(message.array[None]), PREP), model_input(frames[None], PREP))
    small = Clip(stream_id="cam", seq=0, frames=np.zeros((8, 20, 30, 3), dtype=np.uint8), first_frame=0,
                 last_frame=7, pts=np.arange(8) / 25.0)
    assert clip_message(small, short_side=32).shape == (8, 20, 30, 3)  # never enlarged


def test_decoder_pace_replays_a_file_no_faster_than_real_time(indexed_video):
    started = time.monotonic()
    messages = list(file_clip_messages(indexed_video, ClipSplitter(8, 8), "cam", pace=4.0))
    assert time.monotonic() - started >= messages[-1].pts[-1] / 4.0
    stop = threading.Event()
    stop.set()
    assert list(file_clip_messages(indexed_video, ClipSplitter(8, 8), "cam", stop=stop)) == []


def test_decoder_plans_directories_urls_and_cameras(tmp_path, indexed_video):
    (tmp_path / "vids" / "sub").mkdir(parents=True)
    (tmp_path / "vids" / "a.mp4").write_bytes(indexed_video.read_bytes())
    (tmp_path / "vids" / "sub" / "b.mp4").write_bytes(indexed_video.read_bytes())
    (tmp_path / "vids" / "notes.txt").write_text("not a video")
    plans, bad = plan_streams(SourceConfig(path=tmp_path / "vids"))
    assert [p.stream_id for p in plans] == ["vids/a", "vids/sub/b"] and not bad
    plans, bad = plan_streams(SourceConfig(id="lobby", path=tmp_path / "vids", recursive=False))
    assert [p.stream_id for p in plans] == ["lobby/a"]
    plans, bad = plan_streams(SourceConfig(path=tmp_path / "missing.mp4"))
    assert plans == [] and bad[0].reason == "no such file or directory"
    (plan,), _ = plan_streams(SourceConfig(uri="rtsp://admin:hunter2@10.0.0.5/live"))
    assert plan.stream_id == "rtsp://admin:***@10.0.0.5/live" and not plan.is_file
    (plan,), _ = plan_streams(SourceConfig(webcam=2))
    assert (plan.stream_id, plan.target) == ("camera2", 2)


def test_decoder_gives_files_differing_only_by_suffix_their_own_stream_ids(tmp_path, indexed_video):
    for name in ("cam.mp4", "cam.avi", "sub/cam.mp4", "door.mp4"):
        (tmp_path / "vids" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "vids" / name).write_bytes(indexed_video.read_bytes())
    plans, bad = plan_streams(SourceConfig(path=tmp_path / "vids"))
    assert [p.stream_id for p in plans] == ["vids/cam.avi", "vids/cam.mp4", "vids/door", "vids/sub/cam"] and not bad
    assert [Path(p.target).relative_to(tmp_path / "vids").as_posix() for p in plans] == [
        "cam.avi", "cam.mp4", "door.mp4", "sub/cam.mp4"]


def test_gather_batch_fills_across_sources_up_to_max_batch_or_max_wait():
    now = [0.0]
    arrivals = [(0.0, "a0"), (0.01, "b0"), (0.02, "a1"), (0.03, "c0"), (0.5, "b1"), (0.51, "a2")]

    def fetch(count, wait):
        ready = [item for when, item in arrivals if when <= now[0]][:count]
        if not ready:
            now[0] = min([now[0] + wait] + [when for when, _ in arrivals[:1]])
            ready = [item for when, item in arrivals if when <= now[0]][:count]
        del arrivals[:len(ready)]
        return ready

    clock = lambda: now[0]  # noqa: E731
    assert gather_batch(fetch, 3, 0.1, clock=clock) == ["a0", "b0", "a1"]
    assert gather_batch(fetch, 3, 0.1, clock=clock) == ["c0"]
    assert now[0] == pytest.approx(0.13)
    assert gather_batch(fetch, 8, 0.1, idle_wait_s=1.0, clock=clock) == ["b1", "a2"]
    assert gather_batch(fetch, 8, 0.1, idle_wait_s=0.2, clock=clock) == []


def test_classifier_step_matches_offline_features_across_streams_and_sizes(tiny_bundle, classifier, clip_batch):
    bundle = DetectorBundle.load(tiny_bundle)
    model, manifest = load_model(bundle.resolve_model(tiny_bundle))
    big = clip_batch[0].array
    upscaled = np.stack([cv2.resize(frame, (112, 64), interpolation=cv2.INTER_LINEAR) for frame in big])
    odd = clip_message(Clip("big", 0, upscaled, 0, 7, np.arange(8) / 25.0))
    short = clip_batch[1].model_copy(update={"shape": (4, *clip_batch[1].shape[1:]), "pts": [0.0] * 4,
                                             "frames": clip_batch[1].frames[: len(clip_batch[1].frames) // 2]})
    clips = [*clip_batch, odd, short]
    results = classifier(clips)
    assert isinstance(results[-1], Rejected) and "has 4 frames but model" in results[-1].reason
    embeddings = results[:-1]
    assert {e.stream_id for e in embeddings} == {"s0", "s1", "s2", "big"}
    for clip, embedding in zip(clips, embeddings, strict=False):
        assert embedding.key == clip.key and embedding.pts == clip.pts
        assert embedding.model_id == f"r3d-10@{manifest.sha256[:12]}"
        assert set(embedding.timestamps) == {"classifier"}
        features, logits, _ = extract_from_tensors(model, [model_input(np.array(clip.array[None]), manifest.preprocessing)],
                                                bundle.layers, pool_factor=bundle.settings["pool_factor"])
        for layer in bundle.layers:
            np.testing.assert_allclose(embedding.feature(layer), features[layer][0], rtol=1e-4, atol=1e-5)
        probabilities = torch.softmax(torch.from_numpy(logits[0]).double(), 0)
        assert embedding.prediction == int(probabilities.argmax())
        assert embedding.class_name == manifest.class_names[embedding.prediction]
        assert embedding.softmax_max == pytest.approx(float(probabilities.max()), rel=1e-5)
        thumbnail = cv2.imdecode(np.frombuffer(embedding.thumbnail, np.uint8), cv2.IMREAD_COLOR)
        assert thumbnail.shape[:2] == clip.shape[1:3]


def test_classifier_step_rejects_a_sliver_clip_without_resizing_it(classifier, clip_batch, monkeypatch):
    """A 8 x 1 x 65536 clip that bypassed message validation is rejected from its shape; the batch goes on."""
    sliver = np.zeros((PREP.clip_len, 1, 65536, 3), np.uint8)
    bad = ClipMessage.model_construct(stream_id="wide", seq=0, pts=[0.0] * PREP.clip_len, label=None, source=None,
                                      timestamps={}, first_frame=0, last_frame=7, shape=sliver.shape, dtype="uint8",
                                      frames=sliver.tobytes())
    resized_shapes = []
    real_model_inputs = classify.model_inputs

    def spy(clips, preprocessing):
        resized_shapes.extend(clip.shape for clip in clips)
        return real_model_inputs(clips, preprocessing)

    monkeypatch.setattr(classify, "model_inputs", spy)
    good, rejected = classifier([clip_batch[0], bad])
    assert isinstance(rejected, Rejected) and "\n" not in rejected.reason
    assert rejected.reason.startswith("clip wide:0: frame size 1x65536 exceeds the largest side of 8192 pixels")
    assert good.key == clip_batch[0].key and resized_shapes == [clip_batch[0].shape]
    narrow = ClipMessage.model_construct(**{**dict(bad), "shape": (PREP.clip_len, 8, 4096, 3),
                                            "frames": bytes(PREP.clip_len * 8 * 4096 * 3)})
    (refused,) = classifier([narrow])
    assert refused.reason == "clip wide:0: frame size 8x4096 has an aspect ratio beyond 8:1, too extreme to resize for a model"


def test_density_step_scores_like_the_bundle_and_stamps_the_time(tiny_bundle, classifier, clip_batch):
    bundle = DetectorBundle.load(tiny_bundle)
    embeddings = classifier(clip_batch)
    before = time.time()
    verdicts = DensityStep(bundle)(embeddings)
    features = {layer: np.stack([e.feature(layer) for e in embeddings]) for layer in bundle.layers}
    expected = bundle.score(features, np.array([e.softmax_max for e in embeddings]))
    assert [v.key for v in verdicts] == [e.key for e in embeddings]
    np.testing.assert_allclose([v.fused_score for v in verdicts], expected.fused)
    np.testing.assert_allclose([v.p_value for v in verdicts], expected.p_value)
    assert [v.verdict for v in verdicts] == expected.verdicts
    for row, message in enumerate(verdicts):
        assert message.reasons == expected.reasons[row]
        for name, values in expected.loglik.items():
            layer, density = name.split("/")
            assert message.log_likelihoods[layer][density] == pytest.approx(values[row])
        assert message.timestamps["density"] >= before
        assert ScoredClip.from_mapping(message).scored_at == message.timestamps["density"]
    loose = DensityStep(DetectorBundle.load(tiny_bundle), alpha=0.6)(embeddings)
    assert loose[0].p_value == verdicts[0].p_value
    assert all((v.verdict != "normal") == (v.p_value <= 0.6) for v in loose)
    assert sum(v.verdict != "normal" for v in loose) > sum(v.verdict != "normal" for v in verdicts)


def test_density_step_rejects_embeddings_it_cannot_score(tiny_bundle, classifier, clip_batch):
    embedding = classifier(clip_batch[:1])[0]
    step = DensityStep(DetectorBundle.load(tiny_bundle))
    layer = step.bundle.layers[0]
    other_model = embedding.model_copy(update={"model_id": "r3d-10@0123456789ab"})
    no_layer = embedding.model_copy(update={"features": {k: v for k, v in embedding.features.items() if k != layer}})
    short = embedding.model_copy(update={"features": {**embedding.features, layer: type(embedding.features[layer])
                                                      .from_array(np.zeros(3))}})
    good, *bad = step([embedding, other_model, no_layer, short])
    assert isinstance(good, VerdictMessage)
    assert "comes from model r3d-10@0123456789ab" in bad[0].reason
    assert f"no features for layer {layer!r}" in bad[1].reason
    assert "has 3 values, the bundle expects" in bad[2].reason


def test_sink_step_records_once_signs_webhooks_and_survives_a_restart(tmp_path):
    def open_sink(url):
        hooks = WebhookSink({"urls": [url], "secret": "s3cret", "ledger_path": tmp_path / "ledger.jsonl",
                             "dead_letter_path": tmp_path / "dead.jsonl", "timeout_s": 1.0})
        return SinkStep(AlertRules(), JsonlSink(tmp_path / "alerts.jsonl"), webhooks=hooks,
                        thumbnails_dir=tmp_path / "thumbs", verdict_log=VerdictLog(tmp_path / "verdicts.jsonl"))

    with WebhookServer(secret="s3cret") as server:
        sink = open_sink(server.url)
        assert sink(verdict("cam", 0, "normal")) is None
        alert = sink(verdict("cam", 1, "novel"))
        assert alert.idempotency_key == "cam:1:novel"
        assert alert.thumbnail.uri.startswith(str(tmp_path / "thumbs"))
        assert sink(verdict("cam", 1, "novel")).idempotency_key == "cam:1:novel"
        sink.close(5.0)
        sink = open_sink(server.url)
        sink(verdict("cam", 1, "novel"))
        sink(verdict("cam", 2, "adversarial"))
        sink.close(5.0)
        accepted = server.accepted()
    assert [r.header("X-Clipwatch-Idempotency-Key") for r in accepted] == ["cam:1:novel", "cam:2:adversarial"]
    assert all(verify_signature(r.body, r.header("X-Clipwatch-Signature"), "s3cret") for r in accepted)
    alerts = [line for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == 2
    keys = [line.split('"clip_key":"')[1].split('"')[0] for line in (tmp_path / "verdicts.jsonl").read_text()
            .splitlines()]
    assert keys == ["cam:0", "cam:1", "cam:2"]
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == 2


def test_sink_step_dead_letters_webhooks_after_the_last_retry(tmp_path):
    with WebhookServer(secret="s3cret") as server:
        server.default = Reply.fail(503)
        hooks = WebhookSink({"urls": [server.url], "secret": "s3cret", "ledger_path": tmp_path / "ledger.jsonl",
                             "dead_letter_path": tmp_path / "dead.jsonl",
                             "retry": {"max_attempts": 3, "base_delay_s": 0.05, "max_delay_s": 0.1}})
        sink = SinkStep(AlertRules(), JsonlSink(tmp_path / "alerts.jsonl"), webhooks=hooks)
        sink(verdict("cam", 5, "adversarial"))
        sink.close(10.0)
        assert len(server.requests) == 3
    dead = (tmp_path / "dead.jsonl").read_text()
    assert '"idempotency_key":"cam:5:adversarial"' in dead and '"attempts":3' in dead and "HTTP 503" in dead
    assert "cam:5:adversarial" in (tmp_path / "alerts.jsonl").read_text()


def test_sink_places_live_clips_without_timestamps_at_their_decode_time():
    clip = scored_clip(verdict("cam", 3, pts=[math.nan] * 8))
    assert clip.clip_start == clip.clip_end == 103.0 and clip.scored_at == 104.0


def test_verdict_log_keeps_live_clips_without_timestamps_and_the_stable_schema(tmp_path):
    log = VerdictLog(tmp_path / "verdicts.jsonl")
    assert log.write(verdict("cam", 3, pts=[math.nan] * 8))
    log.close()
    record = json.loads((tmp_path / "verdicts.jsonl").read_text().splitlines()[0])
    assert "pts" not in record and record["clip_start"] == record["clip_end"] == 103.0
    assert isinstance(record["prediction"], str) and isinstance(record["prediction_index"], int)
    assert VerdictLog(tmp_path / "verdicts.jsonl").existing[0]["clip_key"] == "cam:3"


def test_reorder_buffer_releases_each_stream_in_order_within_the_window():
    now = [0.0]
    buffer = ReorderBuffer(2.0, clock=lambda: now[0])
    assert buffer.push("a", 0, "a0") == ["a0"]
    assert buffer.push("a", 2, "a2") == [] and buffer.held("a", 2) == "a2"
    assert buffer.push("b", 5, "b5") == []
    assert buffer.push("a", 1, "a1") == ["a1", "a2"]
    now[0] = 1.0
    assert buffer.push("a", 4, "a4") == [] and buffer.expire() == []
    now[0] = 2.5
    assert buffer.expire() == ["b5"]
    now[0] = 3.0
    assert buffer.expire() == ["a4"] and len(buffer) == 0
    assert buffer.push("a", 3, "a3") == ["a3"] and buffer.late == 1
    assert buffer.push("a", 7, "a7") == [] and buffer.push("a", 6, "a6") == []
    assert buffer.drain() == ["a6", "a7"]
    assert ReorderBuffer(0.0).push("c", 9, "c9") == ["c9"]


def test_an_alert_prints_as_one_short_line():
    from pipeline.alerts import Alert
    from pipeline.stream.steps.record import format_alert

    clip = ScoredClip(stream_id="yard/cam-7", seq=12, verdict="novel", fused_score=-41.5, clip_start=3.8,
                      clip_end=4.4, scored_at=1.0, p_value=0.004, prediction="Grow", softmax=0.31,
                      reasons=["fused likelihood p=0.0040 <= 0.01, lowest in the layer3 layers " * 3,
                               "layer3/sep p=0.0010", "fc/sep p=0.0090"])
    line = format_alert(Alert.from_clip(clip, "novel"))
    assert line.startswith("ALERT novel yard/cam-7:12 p=0.0040 fused=-41.500 prediction=Grow (0.31): fused")
    assert len(line) <= 160 and line.endswith("…")
    short = format_alert(Alert.from_clip(ScoredClip(**{**clip.__dict__, "reasons": ("a", "b", "c")}), "novel"))
    assert short.endswith(": a (+2 more)")
