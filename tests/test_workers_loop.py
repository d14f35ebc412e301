"""`StageLoop` on a real in-process bus: batching across streams, dead letters, redelivery, dedupe, ops server."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import msgpack
import pytest
from pipeline_helpers import verdict

from pipeline.alerts import AlertRules, JsonlSink
from pipeline.bus import InProcessBus
from pipeline.detect import Detector
from pipeline.stream.messages import EmbeddingMessage, VerdictMessage, decode, encode
from pipeline.stream.steps.classify import ClassifierStep
from pipeline.stream.steps.decode import file_clip_messages
from pipeline.stream.steps.record import SinkStep, VerdictLog
from pipeline.stream.topology import stage as stage_spec
from pipeline.video import ClipSplitter
from workers.loop import Outcome, Stage, StageLoop
from workers.ops import HealthBoard, OpsServer, PipelineMetrics
from workers.stages import BatchStage, SinkStage


def make_loop(stage, bus, metrics, **options):
    return StageLoop(stage, bus, consumer="test", stop=threading.Event(), metrics=metrics.stage(stage.name),
                     idle_wait_s=0.05, **options)


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def stream_clips(tiny_dataset):
    videos = sorted((tiny_dataset / "MoveLeft").glob("*.avi"))[:3]
    return [[m.with_timestamp("decoder") for m in file_clip_messages(path, ClipSplitter(8, 8), f"cam{i}",
                                                                      short_side=32)]
            for i, path in enumerate(videos)]


def test_classifier_loop_batches_clips_of_several_streams(tiny_bundle, stream_clips):
    bus, metrics = InProcessBus(), PipelineMetrics()
    for row in zip(*stream_clips, strict=True):
        for clip in row:
            bus.publish("clips", encode(clip), key=clip.key)
    total = sum(len(clips) for clips in stream_clips)
    stage = BatchStage(stage_spec("classifier"), ClassifierStep.from_detector(Detector.load(tiny_bundle)), max_batch=4,
                       max_wait_s=0.3)
    loop = make_loop(stage, bus, metrics)
    sizes = []
    while sum(sizes) < total:
        sizes.append(loop.run_once())
    assert sizes == [4, 4, 1]
    assert sample(metrics, "clipwatch_batch_size_count", stage="classifier") == 3
    assert sample(metrics, "clipwatch_batch_size_sum", stage="classifier") == total
    out = [decode(d.payload, expect=EmbeddingMessage) for d in bus.consume("embeddings", "t", "t", count=64)]
    assert [e.key for e in out] == [c.key for row in zip(*stream_clips, strict=True) for c in row]
    assert bus.lag("clips", "classifier") == 0
    lone = stream_clips[0][0].model_copy(update={"seq": 99})
    bus.publish("clips", encode(lone), key=lone.key)
    started = time.monotonic()
    assert loop.run_once() == 1
    assert time.monotonic() - started >= 0.3
    stage.close()


def test_malformed_rejected_and_redelivered_entries(tmp_path):
    bus, metrics = InProcessBus(), PipelineMetrics()
    sink = SinkStage(SinkStep(AlertRules(), JsonlSink(tmp_path / "alerts.jsonl"),
                              verdict_log=VerdictLog(tmp_path / "verdicts.jsonl")), reorder_window_s=0.0)
    bus.publish("verdicts", b"\xc1 definitely not msgpack")
    bus.publish("verdicts", msgpack.packb({"v": 1, "type": "clip", "stream_id": "x"}))
    first = verdict("cam", 0, "novel")
    bus.publish("verdicts", encode(first), key=first.key)
    bus.publish("verdicts", encode(first), key=first.key)
    bad_clock = verdict("cam", 1, "novel", pts=[5.0, 1.0])
    bus.publish("verdicts", encode(bad_clock), key=bad_clock.key)
    loop = make_loop(sink, bus, metrics)
    loop.run_once()
    reasons = [letter.reason for letter in bus.dead_letters("verdicts")]
    assert len(reasons) == 3
    assert reasons[0].startswith("verdicts 0: not msgpack")
    assert reasons[1] == "verdicts 1: expected a verdict message, got clip"
    assert reasons[2] == "cam:1: clip_end 1.0 is before clip_start 5.0"
    assert sample(metrics, "clipwatch_dead_letters_total", stage="sink") == 3
    assert sample(metrics, "clipwatch_duplicates_total", stage="sink") == 1
    assert (tmp_path / "verdicts.jsonl").read_text().count('"clip_key":"cam:0"') == 1
    assert (tmp_path / "alerts.jsonl").read_text().count("cam:0:novel") == 1
    assert bus.lag("verdicts", "sink") == 0
    bus.publish("verdicts", encode(first), key=first.key)
    loop.run_once()
    assert sample(metrics, "clipwatch_duplicates_total", stage="sink") == 2
    assert (tmp_path / "alerts.jsonl").read_text().count("cam:0:novel") == 1


class PoisonedStage(Stage):
    """Raises whenever its batch holds clip `poison` (a bug on one input); records the keys it processed."""

    name, input_topic, output_topic, max_batch = "poisoned", "in", "out", 8
    input_type = VerdictMessage

    def __init__(self, poison: str):
        self.poison, self.calls, self.seen = poison, 0, []

    def step(self, items):
        self.calls += 1
        if any(item.key == self.poison for item in items):
            raise RuntimeError(f"cannot handle {self.poison}")
        self.seen += [item.key for item in items]
        return [Outcome(item, output=item.message) for item in items]


def test_a_poison_input_is_isolated_retried_then_dead_lettered_by_the_bus():
    bus, metrics = InProcessBus(visibility_timeout_ms=100, max_deliveries=2), PipelineMetrics()
    for seq in range(3):
        message = verdict("cam", seq)
        bus.publish("in", encode(message), key=message.key)
    stage = PoisonedStage("cam:1")
    loop = make_loop(stage, bus, metrics)
    assert loop.run_once() == 3
    assert stage.calls == 4 and stage.seen == ["cam:0", "cam:2"]
    assert bus.lag("in", "poisoned") == 1 and bus.lag("out", "x") == 2
    assert sample(metrics, "clipwatch_step_errors_total", stage="poisoned") == 2
    deadline = time.monotonic() + 5
    while not bus.dead_letters("in") and time.monotonic() < deadline:
        loop.run_once()
    (letter,) = bus.dead_letters("in")
    assert letter.key == "cam:1" and letter.reason == "not acknowledged after 2 deliveries (max_deliveries=2)"
    assert stage.seen == ["cam:0", "cam:2"] and bus.lag("in", "poisoned") == 0


def test_ops_server_serves_healthz_and_metrics():
    metrics, board = PipelineMetrics(), HealthBoard(stale_after_s=0.3)
    metrics.stage("classifier").messages_in.inc(3)
    board.beat("classifier")
    server = OpsServer("127.0.0.1", 0, metrics, board, "classifier").start()
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
            assert response.status == 200
            assert json.load(response) == {"status": "ok", "worker": "classifier",
                                           "components": {"classifier": "ok"}}
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
            assert 'clipwatch_messages_in_total{stage="classifier"} 3.0' in response.read().decode()
        time.sleep(0.4)
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(f"{server.url}/healthz", timeout=5)
        assert failure.value.code == 503 and "stale" in failure.value.read().decode()
    finally:
        server.close()
