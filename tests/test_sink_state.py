"""The sink's rule state across restarts and against implausible seqs, on a real in-process bus and real files."""

from __future__ import annotations

import json
import threading

from pipeline_helpers import read_jsonl, verdict
from webhook_server import WebhookServer

from pipeline.alerts import AlertRules, JsonlSink, WebhookSink
from pipeline.bus import Delivery, InProcessBus
from pipeline.stream.messages import encode
from pipeline.stream.reorder import ReorderBuffer, SeqJumpError
from pipeline.stream.steps.record import SinkStep, VerdictLog
from workers.loop import Inbound, StageLoop
from workers.ops import PipelineMetrics
from workers.stages import SinkStage

SECRET = "s3cret"
RULES = {"kinds": {"novel": {"k": 2, "n": 3, "cooldown_s": 2.0}, "adversarial": {"cooldown_s": 1.0}}}
PATTERN = ["novel"] * 12 + ["normal", "adversarial", "adversarial", "normal", "adversarial", "novel", "novel"]


def open_stage(state, url=None, **options) -> SinkStage:
    hooks = None if url is None else WebhookSink({
        "urls": [url], "secret": SECRET, "ledger_path": state / "ledger.jsonl",
        "dead_letter_path": state / "dead.jsonl", "timeout_s": 1.0, "trust_env": False})
    step = SinkStep(AlertRules(RULES), JsonlSink(state / "alerts.jsonl"), webhooks=hooks,
                    verdict_log=VerdictLog(state / "verdicts.jsonl"))
    return SinkStage(step, **options)


def feed(stage: SinkStage, bus: InProcessBus, verdicts: list) -> None:
    """Publish `verdicts` and run the sink's loop until the bus has handed them all over."""
    for message in verdicts:
        bus.publish("verdicts", encode(message), key=message.key)
    loop = StageLoop(stage, bus, consumer="test", stop=threading.Event(), metrics=PipelineMetrics().stage("sink"),
                     idle_wait_s=0.01)
    while loop.run_once():
        pass


def stream(name: str, t0: float = 1_700_000_000.0) -> list:
    """A file stream's verdicts: seq from 0, decoded one per second from unix time `t0`."""
    return [verdict(name, seq, kind, timestamps={"decoder": t0 + seq, "density": t0 + seq + 0.5})
            for seq, kind in enumerate(PATTERN)]


def alert_keys(state) -> list[str]:
    return sorted(record["idempotency_key"] for record in read_jsonl(state / "alerts.jsonl"))


def test_a_restarted_sink_rebuilds_windows_and_cooldowns_and_alerts_exactly_as_without_restart(tmp_path):
    clips = [c for pair in zip(stream("a"), stream("b"), strict=True) for c in pair]
    with WebhookServer(secret=SECRET) as server:
        reference = tmp_path / "reference"
        stage = open_stage(reference, reorder_window_s=0.0)
        feed(stage, InProcessBus(), clips)
        stage.close()
        expected = alert_keys(reference)
        assert len(expected) >= 6  # windows and cooldowns both shape the set

        restarted = tmp_path / "restarted"
        stage = open_stage(restarted, server.url, reorder_window_s=5.0)
        feed(stage, InProcessBus(), clips[:14])  # a: seq 0-6, b: seq 0-6; novel cooldowns still running
        stage.close()
        stage = open_stage(restarted, server.url, reorder_window_s=5.0)
        # the bus redelivers what the first sink had not acknowledged, then the rest follows
        feed(stage, InProcessBus(), clips[8:])
        assert len(stage.buffer) == 0, "streams resume at their logged position instead of waiting for a gap"
        stage.close()
        delivered = [r.header("X-Clipwatch-Idempotency-Key") for r in server.accepted()]
    assert alert_keys(restarted) == expected
    assert sorted(delivered) == expected, "each alert notified exactly once"
    logged = [record["clip_key"] for record in read_jsonl(restarted / "verdicts.jsonl")]
    assert len(logged) == len(set(logged)) == len(clips)


def test_an_implausible_seq_is_dead_lettered_without_silencing_the_stream(tmp_path):
    clips = stream("cam")
    reference = tmp_path / "reference"
    stage = open_stage(reference, reorder_window_s=0.0)
    feed(stage, InProcessBus(), clips)
    stage.close()

    bus, state = InProcessBus(), tmp_path / "forged"
    stage = open_stage(state, reorder_window_s=0.0, max_seq_jump=1000)
    forged = clips[5].model_copy(update={"seq": 10**12})
    feed(stage, bus, [*clips[:5], forged, *clips[5:], *clips[:3]])  # then a decoder re-reads the file from 0
    stage.close()
    [letter] = bus.dead_letters("verdicts")
    assert letter.reason == ("cam:1000000000000: seq is 999999999996 ahead of the stream's position 4 (more than "
                             "alerts.max_seq_jump 1000, and not a decoder restart)")
    assert alert_keys(state) == alert_keys(reference) and len(alert_keys(state)) == 4


def test_a_live_stream_restarting_its_decoder_jumps_ahead_by_its_clock_and_keeps_alerting(tmp_path):
    start, gap_s = 1_700_000_000_000, 3600.0  # live seqs start at the decoder's clock in ms

    def live(seq: int, at: float, kind: str = "adversarial"):
        message = verdict("gate", 0, kind, timestamps={"decoder": at, "density": at + 0.5},
                          pts=[at - start / 1000, at - start / 1000 + 0.28])
        return message.model_copy(update={"seq": seq})

    first = [live(start + i, start / 1000 + 0.32 * i) for i in range(4)]
    restart_ms = start + int(gap_s * 1000)
    after = [live(restart_ms + i, restart_ms / 1000 + 0.5 + 0.32 * i) for i in range(3)]
    bus = InProcessBus()
    stage = open_stage(tmp_path, reorder_window_s=0.0, max_seq_jump=1000)
    feed(stage, bus, [*first, *after])
    stage.close()
    assert bus.dead_letters("verdicts") == []
    assert f"gate:{restart_ms}:adversarial" in alert_keys(tmp_path)


def test_reorder_buffer_refuses_far_jumps_and_resumes_a_position():
    buffer = ReorderBuffer(0.0, max_jump=10)
    buffer.resume("cam", 41, decoded_at=100.0)
    assert buffer.push("cam", 43, "c43") == [] and buffer.push("cam", 42, "c42") == ["c42", "c43"]
    try:
        buffer.push("cam", 60, "c60", decoded_at=101.0)
    except SeqJumpError as error:
        assert str(error).startswith("cam:60: seq is 17 ahead of the stream's position 43")
    else:
        raise AssertionError("a jump of 17 > 10 was accepted")
    assert buffer.push("cam", 53, "c53") == [] and len(buffer) == 1  # within the bound: held for the gap
    assert buffer.push("cam", 5, "c5") == ["c5"] and buffer.late == 1  # behind: released, harmless


def test_without_a_verdict_log_stateful_rules_warn_at_start(tmp_path, caplog):
    SinkStep(AlertRules(RULES), JsonlSink(tmp_path / "alerts.jsonl")).close()
    assert "alerts.verdicts_jsonl is not set" in caplog.text
    caplog.clear()
    SinkStep(AlertRules(), JsonlSink(tmp_path / "alerts.jsonl")).close()
    assert "verdicts_jsonl" not in caplog.text


def test_verdict_log_lines_of_older_versions_without_clip_times_are_replayed(tmp_path):
    record = json.loads(json.dumps({"clip_key": "cam:0", "stream_id": "cam", "seq": 0, "verdict": "novel",
                                    "fused_score": 1.0, "p_value": 0.001, "prediction": None, "prediction_index": 3,
                                    "clip_start": None, "clip_end": None,
                                    "timestamps": {"decoder": 50.0, "density": 51.0}}))
    (tmp_path / "verdicts.jsonl").write_text(json.dumps(record) + "\n")
    step = SinkStep(AlertRules(), JsonlSink(tmp_path / "alerts.jsonl"), verdict_log=VerdictLog(tmp_path /
                                                                                               "verdicts.jsonl"))
    assert step.rules.recall("cam", 0).clip.clip_end == 50.0 and step.positions == {"cam": (0, 50.0)}
    step.close()


def test_a_batch_of_verdicts_costs_one_verdict_log_sync_while_each_alert_is_synced_before_it(tmp_path, monkeypatch):
    import os

    from pipeline.alerts import journal as journal_module

    synced: list[str] = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync",
                        lambda fd: (synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))),
                                    real_fsync(fd)))
    stage = open_stage(tmp_path, reorder_window_s=0.0)
    synced.clear()  # opening the files
    clips = stream("cam")
    outcomes = stage.step([Inbound(Delivery(str(n), encode(clip), "verdicts", "sink"), clip)
                           for n, clip in enumerate(clips)])
    stage.close()
    assert len(outcomes) == len(clips) and not any(outcome.error for outcome in outcomes)
    alerts = alert_keys(tmp_path)
    assert len(alerts) == 4
    assert synced[:synced.index("verdicts.jsonl")] == ["alerts.jsonl"] * len(alerts), \
        "each alert is on disk before the batch's verdicts"
    assert synced.count("verdicts.jsonl") == 1
    assert len(read_jsonl(tmp_path / "verdicts.jsonl")) == len(clips)
