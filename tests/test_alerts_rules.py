"""Alert rules (k-of-n smoothing, cooldowns, thresholds), the scored-clip input, the alert body and its schema."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from pipeline.alerts import Alert, AlertRules, ScoredClip, store_thumbnail, validate_alert_body
from pipeline.alerts.errors import AlertConfigError, AlertInputError, AlertSchemaError
from pipeline.alerts.schema import alert_schema
from pipeline.stream.messages import VerdictMessage

JPEG = b"\xff\xd8\xff\xe0fake-but-opaque-jpeg-bytes\xff\xd9"


def clip(seq: int, verdict: str = "novel", stream: str = "cam1", pts: float | None = None, **extra) -> dict:
    """A verdict as the density stage emits it; clip `seq` spans [seq, seq + 1) s of stream time by default."""
    start = float(seq) if pts is None else pts
    return {
        "clip_key": f"{stream}:{seq}", "stream_id": stream, "seq": seq, "verdict": verdict,
        "reasons": [f"{verdict} at layer conv5"], "fused_score": 4.0, "p_value": 0.001, "prediction": "walking",
        "softmax": 0.42, "layer_scores": {"conv4": -120.5, "conv5": -98.25}, "clip_start": start,
        "clip_end": start + 1.0, "scored_at": 1_700_000_000.0 + seq, **extra,
    }


def run(rules: AlertRules, clips: list[dict]) -> list[str]:
    """Idempotency keys of the alerts raised by feeding `clips` in order."""
    return [alert.idempotency_key for c in clips if (alert := rules.evaluate(c)) is not None]


def test_default_rules_alert_on_every_novel_and_adversarial_clip():
    rules = AlertRules()
    verdicts = ["normal", "novel", "normal", "adversarial", "novel"]
    raised = run(rules, [clip(i, v) for i, v in enumerate(verdicts)])
    assert raised == ["cam1:1:novel", "cam1:3:adversarial", "cam1:4:novel"]
    assert rules.counters["evaluated"] == 5 and rules.counters["alerted"] == 3


def test_only_configured_kinds_alert():
    rules = AlertRules({"kinds": {"adversarial": {}}})
    assert run(rules, [clip(0, "novel"), clip(1, "adversarial"), clip(2, "normal")]) == ["cam1:1:adversarial"]


def test_k_of_n_window_counts_the_last_n_seqs_of_the_same_kind():
    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 3}}})
    verdicts = ["novel", "normal", "normal", "novel", "normal", "novel", "novel"]
    alerts = [rules.evaluate(clip(i, v)) for i, v in enumerate(verdicts)]
    raised = {a.seq: a for a in alerts if a is not None}
    # seq 3: window {1,2,3} holds one novel; seq 5: {3,4,5} holds two; seq 6: {4,5,6} holds two.
    assert sorted(raised) == [5, 6]
    assert raised[5].smoothing.seqs == (3, 5) and raised[6].smoothing.seqs == (5, 6)
    assert raised[5].to_body()["smoothing"] == {"k": 2, "n": 3, "hits": 2, "seqs": [3, 5]}
    assert rules.counters["smoothed_out"] == 2  # seqs 0 and 3 counted but were not enough


def test_k_of_n_does_not_mix_kinds_or_streams():
    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 2}, "adversarial": {"k": 2, "n": 2}}})
    assert run(rules, [clip(0, "novel"), clip(1, "adversarial"), clip(2, "novel")]) == []
    interleaved = [clip(0, "novel", "camA"), clip(0, "novel", "camB"), clip(1, "novel", "camA")]
    assert run(AlertRules({"kinds": {"novel": {"k": 2, "n": 2}}}), interleaved) == ["camA:1:novel"]


def test_a_missing_seq_counts_as_not_alerting():
    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 2}}})
    assert run(rules, [clip(0), clip(2), clip(3)]) == ["cam1:3:novel"]


def test_cooldown_on_the_stream_clock_per_stream_and_kind():
    rules = AlertRules({"kinds": {"novel": {"cooldown_s": 10}, "adversarial": {"cooldown_s": 10}}})
    clips = [
        clip(0, pts=0.0),                     # alert, cooldown of novel until clip_end 1 + 10 = 11
        clip(1, pts=5.0),                     # clip_end 6: held
        clip(2, "adversarial", pts=6.0),      # other kind: alert
        clip(0, stream="cam2", pts=6.5),      # other stream: alert
        clip(3, pts=9.9),                     # clip_end 10.9: held
        clip(4, pts=10.0),                    # clip_end 11.0: cooldown over
    ]
    assert run(rules, clips) == ["cam1:0:novel", "cam1:2:adversarial", "cam2:0:novel", "cam1:4:novel"]
    assert rules.counters["cooled_down"] == 2


def test_cooldown_can_use_scoring_time_instead():
    config = {"kinds": {"novel": {"cooldown_s": 2.5}}, "cooldown_clock": "scored_at"}
    clips = [clip(i, pts=0.0, scored_at=100.0 + i) for i in range(5)]  # a stream whose pts never advance
    assert run(AlertRules(config), clips) == ["cam1:0:novel", "cam1:3:novel"]
    assert run(AlertRules({"kinds": {"novel": {"cooldown_s": 2.5}}}), clips) == ["cam1:0:novel"]


def test_stream_clock_going_back_ends_the_cooldown():
    rules = AlertRules({"kinds": {"novel": {"cooldown_s": 60}}})
    assert run(rules, [clip(0, pts=500.0), clip(1, pts=510.0), clip(2, pts=0.0)]) == ["cam1:0:novel", "cam1:2:novel"]


def test_thresholds_decide_which_clips_count():
    rules = AlertRules({"kinds": {"novel": {"max_p_value": 0.01, "min_fused_score": 2.0, "max_fused_score": 9.0}}})
    clips = [
        clip(0, p_value=0.05),        # p too large
        clip(1, fused_score=1.5),     # score too low
        clip(2, fused_score=9.5),     # score too high
        clip(3, p_value=0.01, fused_score=2.0),
    ]
    assert run(rules, clips) == ["cam1:3:novel"]
    smoothed = AlertRules({"kinds": {"novel": {"k": 2, "n": 2, "max_p_value": 0.01}}})
    assert run(smoothed, [clip(0, p_value=0.5), clip(1)]) == []  # a novel verdict above the p threshold does not count


def test_redelivered_clip_gets_the_same_answer_and_changes_nothing():
    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 3}}})
    first = [rules.evaluate(clip(i)) for i in range(3)]
    assert first[0] is None and first[1] is not None
    assert rules.evaluate(clip(1)) is first[1]
    assert rules.evaluate(clip(0)) is None
    assert rules.counters["redelivered"] == 2 and rules.counters["evaluated"] == 3


def test_out_of_order_clip_raises_nothing_but_counts_later():
    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 3}}})
    assert run(rules, [clip(0, "normal"), clip(2, "normal"), clip(1), clip(3)]) == ["cam1:3:novel"]
    assert rules.counters["out_of_order"] == 1


def test_replay_is_deterministic():
    config = {"kinds": {"novel": {"k": 2, "n": 4, "cooldown_s": 3}, "adversarial": {"k": 1, "n": 1, "cooldown_s": 5}}}
    verdicts = ["novel", "adversarial", "novel", "normal", "novel", "adversarial", "adversarial", "novel", "novel"] * 3
    clips = [clip(i, v, stream=f"cam{i % 2}") for i, v in enumerate(verdicts)]
    rules_a, rules_b = AlertRules(config), AlertRules(config)
    first = [a.to_json_bytes() for c in clips if (a := rules_a.evaluate(c)) is not None]
    second = [a.to_json_bytes() for c in clips if (a := rules_b.evaluate(copy.deepcopy(c))) is not None]
    assert first == second and len(first) >= 4
    assert rules_a.counters == rules_b.counters


def test_forget_starts_a_stream_afresh():
    rules = AlertRules({"kinds": {"novel": {"cooldown_s": 100}}})
    assert run(rules, [clip(0), clip(1)]) == ["cam1:0:novel"]
    rules.forget("cam1")
    assert rules.streams == ()
    assert run(rules, [clip(2)]) == ["cam1:2:novel"]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"kinds": {"novel": {"k": 3, "n": 2}}}, r"^alert rules: kinds\.novel: k \(3\) must not exceed n \(2\)$"),
        ({"kinds": {"novel": {"k": 0}}}, r"^alert rules: kinds\.novel\.k: Input should be greater than or equal to 1"),
        ({"kinds": {"novel": {"max_p_value": 1.5}}}, r"^alert rules: kinds\.novel\.max_p_value: .*less than or equal"),
        ({"kinds": {"novel": {"windw": 3}}}, r"^alert rules: kinds\.novel\.windw: unknown key$"),
        ({"cooldown_clock": "wall"}, r"^alert rules: cooldown_clock: Input should be 'stream' or 'scored_at'$"),
    ],
)
def test_bad_rule_config_is_refused_with_one_line(config, message):
    with pytest.raises(AlertConfigError, match=message) as error:
        AlertRules(config)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


def test_scored_clip_from_mapping_reads_clip_key_alone():
    data = clip(7, stream="lobby:east")
    del data["stream_id"], data["seq"]
    scored = ScoredClip.from_mapping(data)
    assert (scored.stream_id, scored.seq, scored.clip_key) == ("lobby:east", 7, "lobby:east:7")
    assert scored.reasons == ("novel at layer conv5",)
    assert dict(scored.layer_scores) == {"conv4": -120.5, "conv5": -98.25}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"p_value": 1.5}, r"^cam1:3: p_value must lie in \[0, 1\], got 1.5$"),
        ({"fused_score": float("nan")}, r"^cam1:3: fused_score must be finite, got nan$"),
        ({"fused_score": "high"}, r"^cam1:3: fused_score must be a number, got 'high'$"),
        ({"layer_scores": {"conv5": float("-inf")}}, r"^cam1:3: layer_scores\[conv5\] must be finite"),
        ({"clip_key": "cam1:4"}, r"^cam1:4: clip_key does not match stream_id 'cam1' and seq 3$"),
        ({"clip_end": 2.0}, r"^cam1:3: clip_end 2.0 is before clip_start 3.0$"),
        ({"reasons": "one string"}, r"^cam1:3: reasons must be a list of strings$"),
        ({"seq": -1, "clip_key": "cam1:-1"}, r"clip_key must look like 'stream_id:seq'$"),
        ({"thumbnail": 12}, r"^cam1:3: thumbnail must be bytes or a path, got int$"),
    ],
)
def test_bad_scored_clip_is_refused_with_one_line(change, message):
    with pytest.raises(AlertInputError, match=message) as error:
        ScoredClip.from_mapping({**clip(3), **change})
    assert "\n" not in str(error.value) and isinstance(error.value, ValueError)


def test_missing_fields_are_named():
    data = clip(3)
    del data["verdict"], data["scored_at"]
    with pytest.raises(AlertInputError, match=r"^cam1:3: missing field\(s\): verdict, scored_at$"):
        ScoredClip.from_mapping(data)


def test_a_clip_without_p_value_alerts_unless_a_p_threshold_is_set():
    uncalibrated = [clip(0, p_value=None), clip(1, p_value=None)]
    alert = AlertRules().evaluate(uncalibrated[0])
    assert alert.to_body()["verdict"]["p_value"] is None
    validate_alert_body(alert.to_body())
    assert run(AlertRules({"kinds": {"novel": {"max_p_value": 0.05}}}), uncalibrated) == []


def test_a_bus_verdict_message_becomes_a_scored_clip():
    message = VerdictMessage(
        stream_id="gate", seq=12, pts=[4.0, 4.04, 4.6], timestamps={"decoder": 99.0, "density": 100.5},
        model_id="r3d18", log_likelihoods={"layer3": {"tied": -50.0}, "layer4": {"tied": -40.0, "gmm": -38.5}},
        fused_score=-3.5, p_value=0.002, verdict="adversarial", reasons=["softmax confident, likelihood low"],
        prediction=7, class_name="juggling", softmax_max=0.97, thumbnail=JPEG,
    )
    scored = ScoredClip.from_mapping(message.model_dump())
    assert ScoredClip.from_mapping(message) == scored
    assert (scored.clip_key, scored.clip_start, scored.clip_end, scored.scored_at) == ("gate:12", 4.0, 4.6, 100.5)
    assert (scored.prediction, scored.softmax, scored.thumbnail) == ("juggling", 0.97, JPEG)
    assert dict(scored.layer_scores) == {"layer3/tied": -50.0, "layer4/tied": -40.0, "layer4/gmm": -38.5}
    alert = AlertRules().evaluate(scored)
    assert alert.idempotency_key == "gate:12:adversarial"
    validate_alert_body(alert.to_json_bytes())


def test_alert_body_carries_the_verdict_and_conforms_to_the_schema():
    alert = AlertRules().evaluate(clip(5, "adversarial", thumbnail=JPEG))
    body = json.loads(alert.to_json_bytes())
    validate_alert_body(body)
    validate_alert_body(alert.to_json_bytes())
    assert body["idempotency_key"] == "cam1:5:adversarial" and body["clip_key"] == "cam1:5"
    assert body["verdict"] == {
        "verdict": "adversarial", "reasons": ["adversarial at layer conv5"], "fused_score": 4.0, "p_value": 0.001,
        "prediction": "walking", "softmax": 0.42, "layer_scores": {"conv4": -120.5, "conv5": -98.25},
    }
    assert body["timestamps"] == {"clip_start": 5.0, "clip_end": 6.0, "scored_at": 1_700_000_005.0}
    assert body["thumbnail"] == {
        "uri": None, "sha256": hashlib.sha256(JPEG).hexdigest(), "size_bytes": len(JPEG), "media_type": "image/jpeg",
    }
    assert body["schema_version"] == alert_schema()["properties"]["schema_version"]["const"]
    assert alert.to_json_bytes() == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def test_thumbnail_path_is_passed_through_as_uri():
    alert = AlertRules().evaluate(clip(1, thumbnail="/var/clipwatch/thumbs/cam1-1.jpg"))
    assert alert.to_body()["thumbnail"]["uri"] == "/var/clipwatch/thumbs/cam1-1.jpg"
    assert AlertRules().evaluate(clip(1)).to_body()["thumbnail"] is None


def test_store_thumbnail_writes_the_bytes_once_content_addressed(tmp_path):
    alert = AlertRules().evaluate(clip(2, thumbnail=JPEG))
    stored = store_thumbnail(alert, tmp_path / "thumbs")
    target = tmp_path / "thumbs" / f"{hashlib.sha256(JPEG).hexdigest()}.jpg"
    assert stored.thumbnail.uri == str(target) and target.read_bytes() == JPEG
    assert store_thumbnail(alert, tmp_path / "thumbs") == stored
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == [target.name]
    validate_alert_body(stored.to_body())
    plain = AlertRules().evaluate(clip(3))
    assert store_thumbnail(plain, tmp_path / "thumbs") is plain
    from_buffer = AlertRules().evaluate(clip(4, thumbnail=memoryview(JPEG)))
    assert store_thumbnail(from_buffer, tmp_path / "thumbs").thumbnail.uri == str(target)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.pop("kind"), r"^\$: missing required field\(s\): kind$"),
        (lambda b: b.update(seq="5"), r"^\$\.seq: expected integer, got string$"),
        (lambda b: b.update(seq=True), r"^\$\.seq: expected integer, got boolean$"),
        (lambda b: b.update(extra=1), r"^\$\.extra: unexpected field$"),
        (lambda b: b["verdict"].update(p_value=1.2), r"^\$\.verdict\.p_value: 1\.2 is above the maximum 1$"),
        (lambda b: b["verdict"]["layer_scores"].update(conv5="x"), r"^\$\.verdict\.layer_scores\.conv5: expected num"),
        (lambda b: b["verdict"]["reasons"].append(3), r"^\$\.verdict\.reasons\[1\]: expected string, got number$"),
        (lambda b: b.update(schema_version=2), r"^\$\.schema_version: expected 1, got 2$"),
        (lambda b: b.update(clip_key="cam1"), r"^\$\.clip_key: 'cam1' does not match"),
        (lambda b: b["smoothing"].update(seqs=[]), r"^\$\.smoothing\.seqs: expected at least 1 item"),
        (lambda b: b["thumbnail"].update(sha256="XYZ"), r"^\$\.thumbnail\.sha256: 'XYZ' does not match"),
    ],
)
def test_schema_validation_rejects_nonconforming_bodies(mutate, message):
    body = AlertRules().evaluate(clip(5, thumbnail=JPEG)).to_body()
    mutate(body)
    with pytest.raises(AlertSchemaError, match=message):
        validate_alert_body(body)


def test_schema_validator_refuses_keywords_it_does_not_implement():
    with pytest.raises(AlertSchemaError, match="not supported: oneOf"):
        validate_alert_body({}, {"type": "object", "oneOf": []})
    with pytest.raises(AlertSchemaError, match=r"^\$: not JSON"):
        validate_alert_body(b"{not json")


def test_alert_from_clip_defaults_to_a_single_clip_window():
    alert = Alert.from_clip(ScoredClip.from_mapping(clip(9, "novel")), "novel")
    assert alert.idempotency_key == "cam1:9:novel" and alert.smoothing.seqs == (9,)
