"""MQTT delivery against a real `mosquitto`: Frigate-style events and retained camera states arrive with the right
payloads; a broker killed and restarted gets the queued and later messages; an unreachable broker or a refused login
is one error line, the queue is bounded and what it drops is counted; event grouping; the config section."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mqtt_broker import MosquittoBroker, Subscriber, free_port
from pipeline_helpers import verdict

from pipeline.alerts import Alert, EventTracker, MqttConfig, MqttSink, ScoredClip
from pipeline.alerts.errors import AlertConfigError, SinkClosedError
from pipeline.config import ConfigError, parse_config
from workers.ops import PipelineMetrics
from workers.stages import SinkStage, build_stages

BUNDLE = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "bundles" / "default"
EVENTS = "clipwatch/events"


def alert(seq: int, stream: str = "cam1", kind: str = "novel", p_value: float = 0.004) -> Alert:
    clip = ScoredClip(stream_id=stream, seq=seq, verdict=kind, fused_score=6.0, p_value=p_value,
                      clip_start=float(seq), clip_end=seq + 1.0, scored_at=1_700_000_000.0 + seq,
                      reasons=("low likelihood at layer2",), prediction="walking", softmax=0.5)
    return Alert.from_clip(clip, kind)


def events(subscriber: Subscriber) -> list[dict]:
    return [m.data for m in subscriber.on(EVENTS)]


def wait_connected(sink: MqttSink, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not sink.stats.connected:
        assert time.monotonic() < deadline, f"sink not connected to {sink.where} within {timeout} s"
        time.sleep(0.02)


def retained(port: int, topic: str, count: int = 1) -> list:
    """What a new subscriber to `topic` receives at once: the retained messages (payloads, decoded)."""
    with Subscriber(port, topic) as late:
        messages = late.wait_for(lambda got: len(got) >= count, timeout=5)
    assert all(m.retain for m in messages)
    return [m.data if m.data is not None else m.payload for m in messages]


def test_events_and_retained_state_reach_a_real_broker():
    with MosquittoBroker() as broker, Subscriber(broker.port, "clipwatch/#") as sub, \
            MqttSink({"url": broker.url, "normal_clips_to_end": 2}) as sink:
        wait_connected(sink)
        sink.observe("cam1", "normal")
        sub.wait_for(lambda got: sub.on("clipwatch/cam1/state"))
        first, second = alert(3, p_value=0.004), alert(5, p_value=0.001)
        sink.submit(first)
        sink.observe("cam1", "novel")
        sub.wait_for(lambda got: len(sub.on("clipwatch/cam1/state")) == 2)
        sink.submit(second)
        sink.observe("cam1", "novel")
        sink.observe("cam1", "normal")  # one normal clip does not end it ...
        assert sink.flush(5)
        assert retained(broker.port, "clipwatch/cam1/state")[0]["state"] == "novel"
        sink.observe("cam1", "normal")  # ... two in a row do
        sub.wait_for(lambda got: len(events(sub)) == 3 and len(sub.on("clipwatch/cam1/state")) == 3)
        assert sink.flush(5) and sink.stats.dropped == 0

        new, update, end = events(sub)
        assert [new["type"], update["type"], end["type"]] == ["new", "update", "end"]
        assert new["before"] == new["after"], "Frigate's new events carry the first snapshot twice"
        opened = new["after"]
        assert opened["id"] == "cam1:3:novel" and opened["camera"] == "cam1" and opened["label"] == "novel"
        assert (opened["start_time"], opened["end_time"], opened["alerts"]) == (first.clip.scored_at, None, 1)
        assert opened["alert"] == first.to_body(), "the event carries the alert body of alert.schema.json"
        assert update["before"] == opened
        assert update["after"]["alert"] == second.to_body() and update["after"]["alerts"] == 2
        assert (update["after"]["first_seq"], update["after"]["last_seq"], update["after"]["min_p_value"]) == \
            (3, 5, 0.001)
        assert end["before"] == update["after"]
        assert end["after"]["end_reason"] == "normal" and end["after"]["end_time"] >= opened["start_time"]

        states = [m.data for m in sub.on("clipwatch/cam1/state")]
        assert [s["state"] for s in states] == ["normal", "novel", "normal"]
        assert states[1]["events"] == {"novel": "cam1:3:novel"} and states[2]["events"] == {}
        assert retained(broker.port, "clipwatch/cam1/state") == [states[2]]
        assert retained(broker.port, "clipwatch/available") == [b"online"]
        assert not sub.on(EVENTS)[0].retain and sub.on(EVENTS)[0].qos == 1


def test_a_clean_stop_ends_open_events_and_says_offline():
    with MosquittoBroker() as broker, Subscriber(broker.port, "site/a/#") as sub:
        sink = MqttSink({"url": broker.url, "topic_prefix": "site/a"})
        wait_connected(sink)
        sink.submit(alert(1, stream="videos/yard 1.mp4", kind="adversarial"))
        sink.submit(alert(1, stream="videos/yard 1.mp4", kind="novel"))
        topic = "site/a/videos%2Fyard%201.mp4/state"
        sub.wait_for(lambda got: any(m.data and m.data.get("events", {}).keys() == {"adversarial", "novel"}
                                     for m in sub.on(topic)))
        assert sub.on(topic)[-1].data["state"] == "adversarial", "the most severe open event names the state"
        assert sink.close(5) is True
        got = sub.wait_for(lambda got: len([m for m in got if m.topic == "site/a/events"]) == 4)
        ends = [m.data for m in got if m.topic == "site/a/events"][2:]
        assert {(e["type"], e["after"]["label"], e["after"]["end_reason"]) for e in ends} == \
            {("end", "adversarial", "shutdown"), ("end", "novel", "shutdown")}
        sub.wait_for(lambda got: got[-1].topic == "site/a/available" and got[-1].payload == b"offline")
        assert sub.on(topic)[-1].data["state"] == "normal"
        with pytest.raises(SinkClosedError):
            sink.submit(alert(2))


def test_an_event_times_out_without_clips_of_its_kind():
    with MosquittoBroker() as broker, Subscriber(broker.port, EVENTS) as sub, \
            MqttSink({"url": broker.url, "event_timeout_s": 0.3}) as sink:
        sink.submit(alert(1))
        sink.observe("cam1", "adversarial")  # another kind does not keep a novel event open
        sub.wait_for(lambda got: len(got) == 2, timeout=5)
        new, end = events(sub)
        assert (new["type"], end["type"], end["after"]["end_reason"]) == ("new", "end", "timeout")
        assert end["after"]["end_time"] - new["after"]["start_time"] > 0


def test_broker_killed_and_restarted_gets_queued_and_later_alerts():
    with MosquittoBroker() as broker:
        sink = MqttSink({"url": broker.url, "retain": True, "client_id": "clipwatch-test-sink"})
        with Subscriber(broker.port, EVENTS) as sub:
            wait_connected(sink)
            sink.submit(alert(1))
            sub.wait_for(lambda got: len(got) == 1)
            assert sink.flush(5)
            broker.kill()
            sink.submit(alert(2))  # queued while the broker is down
            sink.observe("cam1", "novel")
            assert not sink.flush(0.5) and sink.stats.queued + sink.stats.in_flight >= 1
            broker.start()
            wait_connected(sink, timeout=15)
            assert sink.flush(10)
        # A broker restarted without persistence lost every retained message: the sink published them again.
        [last_event] = retained(broker.port, EVENTS)
        assert (last_event["type"], last_event["after"]["alerts"], last_event["after"]["id"]) == \
            ("update", 2, "cam1:1:novel")
        [state] = retained(broker.port, "clipwatch/cam1/state")
        assert state["state"] == "novel" and state["events"] == {"novel": "cam1:1:novel"}
        with Subscriber(broker.port, EVENTS) as later:
            later.wait_for(lambda got: len(got) == 1)  # the retained one
            sink.submit(alert(3))
            got = later.wait_for(lambda got: len(got) == 2)
            assert got[-1].data["type"] == "update" and got[-1].data["after"]["alerts"] == 3
        assert sink.flush(5)  # the subscriber may see alert 3 before the sink has the broker's PUBACK
        stats = sink.stats
        assert (stats.dropped, stats.queued, stats.in_flight) == (0, 0, 0)
        assert sink.close(5)


def test_an_unreachable_broker_is_one_error_line_and_the_queue_is_bounded(caplog):
    port = free_port()
    caplog.set_level(logging.INFO, logger="pipeline.alerts.mqtt")
    sink = MqttSink({"url": f"mqtt://127.0.0.1:{port}", "max_queue": 5})
    started = time.monotonic()
    for seq in range(20):
        sink.submit(alert(seq))  # 1 new + 19 updates: only the 5 newest are kept
        sink.observe("cam1", "novel")
    assert time.monotonic() - started < 0.5, "submit never waits for the broker"
    stats = sink.stats
    assert (stats.connected, stats.queued, stats.dropped) == (False, 6, 15)  # 5 events + cam1's state
    deadline = time.monotonic() + 5
    while not any("cannot connect" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no error logged for the unreachable broker"
        time.sleep(0.05)
    errors = sorted(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert len(errors) == 2 and all("\n" not in line for line in errors)
    assert f"mqtt://127.0.0.1:{port}: cannot connect" in errors[0] and "Connection refused" in errors[0]
    assert "queue full (5 messages wait for the broker): dropping the oldest" in errors[1]

    with MosquittoBroker(port=port) as broker, Subscriber(broker.port, "clipwatch/#") as sub:
        wait_connected(sink, timeout=15)
        assert sink.flush(10)
        got = sub.wait_for(lambda got: len(events(sub)) == 5 and sub.on("clipwatch/cam1/state"))
        assert [e["after"]["alerts"] for e in events(sub)] == [16, 17, 18, 19, 20]
        assert got and sub.on("clipwatch/cam1/state")[-1].data["state"] == "novel"
        assert sink.close(5)
    assert any("connected to" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_refused_login_is_one_error_line_and_the_right_one_connects(caplog):
    caplog.set_level(logging.ERROR, logger="pipeline.alerts.mqtt")
    with MosquittoBroker(password="right") as broker:
        wrong = MqttSink({"url": broker.url, "username": "clipwatch", "password": "wrong"})
        wrong.submit(alert(1))
        time.sleep(1.5)  # a first attempt and a retry
        assert not wrong.stats.connected
        assert not wrong.close(0.1), "what could not be delivered is reported"
        [line] = [r.getMessage() for r in caplog.records]
        assert "the broker refused the connection: Not authorized" in line and "wrong" not in line
        with Subscriber(broker.port, "#", username="clipwatch", password="right") as sub, \
                MqttSink({"url": broker.url, "username": "clipwatch", "password": "right"}) as right:
            right.submit(alert(1))
            sub.wait_for(lambda got: len(events(sub)) == 1)


def test_the_sink_worker_publishes_what_its_rules_raise(tmp_path):
    """The wiring of `workers.stages`: alerts.mqtt in the config feeds the sink stage's alerts and verdicts."""
    with MosquittoBroker() as broker, Subscriber(broker.port, "clipwatch/#") as sub:
        config = parse_config({"bundle": str(BUNDLE), "alerts": {
            "jsonl": "alerts.jsonl", "print": False, "rules": {"kinds": {"novel": {"k": 2, "n": 3}}},
            "mqtt": {"url": broker.url, "normal_clips_to_end": 2}}}, base=tmp_path)
        metrics = PipelineMetrics()
        stages = build_stages("sink", config, metrics)
        [sink] = [stage for stage in stages if isinstance(stage, SinkStage)]
        for seq, kind in enumerate(["normal", "novel", "novel", "novel", "normal", "normal"]):
            sink.record(verdict("cam1", seq, kind))
        assert sink.mqtt.flush(5)
        sink.poll()
        assert b"clipwatch_mqtt_up 1.0" in metrics.render() and b"clipwatch_mqtt_queued 0.0" in metrics.render()
        assert b"clipwatch_mqtt_published 0.0" not in metrics.render()  # the events and states went out
        for stage in stages:
            stage.close()
        got = sub.wait_for(lambda got: any(m.topic == "clipwatch/available" and m.payload == b"offline" for m in got))
    assert [(e["type"], e["after"]["id"], e["after"]["alerts"]) for e in events(sub)] == \
        [("new", "cam1:2:novel", 1), ("update", "cam1:2:novel", 2), ("end", "cam1:2:novel", 2)]
    assert events(sub)[-1]["after"]["end_reason"] == "normal"
    assert [m.data["state"] for m in got if m.topic == "clipwatch/cam1/state"][-1] == "normal"


def test_tls_with_a_ca_file_and_an_untrusted_certificate_is_one_error_line(caplog):
    caplog.set_level(logging.ERROR, logger="pipeline.alerts.mqtt")
    with MosquittoBroker(tls=True) as broker, Subscriber(broker.port, EVENTS, ca_file=broker.ca_file) as sub:
        assert broker.url.startswith("mqtts://")
        with MqttSink({"url": broker.url, "tls": str(broker.ca_file)}) as trusting:
            trusting.submit(alert(1))
            sub.wait_for(lambda got: len(got) == 1)
        assert caplog.records == []
        untrusting = MqttSink({"url": broker.url, "tls": True})  # the system CAs do not know the test CA
        deadline = time.monotonic() + 5
        while not caplog.records:
            assert time.monotonic() < deadline, "no error logged for an untrusted certificate"
            time.sleep(0.05)
        untrusting.close(0.1)
    [line] = [r.getMessage() for r in caplog.records]
    assert "cannot connect:" in line and "CERTIFICATE_VERIFY_FAILED" in line


def test_event_tracker_groups_alerts_per_camera_and_kind():
    tracker = EventTracker(timeout_s=10, normal_clips_to_end=2)
    changes = tracker.alert(alert(1), now=100.0)
    assert [(c.what, c.payload and c.payload["type"]) for c in changes] == [("state", None), ("event", "new"),
                                                                           ("state", None)]
    [update] = tracker.alert(alert(2), now=101.0)
    assert update.payload["type"] == "update"
    [other] = [c for c in tracker.alert(alert(2, stream="cam2"), now=101.0) if c.what == "event"]
    assert other.payload["type"] == "new" and other.payload["after"]["id"] == "cam2:2:novel"
    assert tracker.verdict("cam1", "normal", 102.0) == []
    assert tracker.verdict("cam1", "novel", 103.0) == [], "a clip of its kind resets the normal run"
    assert tracker.verdict("cam1", "normal", 104.0) == []
    ended = tracker.verdict("cam1", "normal", 105.0)
    assert [c.payload["type"] for c in ended if c.what == "event"] == ["end"]
    assert tracker.state("cam1")["state"] == "normal" and tracker.state("cam2")["state"] == "novel"
    assert tracker.next_deadline() == 111.0
    [end, state] = tracker.expire(111.0)
    assert end.payload["after"]["end_reason"] == "timeout" and state.camera == "cam2"
    [new, state] = tracker.alert(alert(9), now=200.0)
    assert new.payload["type"] == "new" and new.payload["after"]["id"] == "cam1:9:novel", "after the end: a new one"
    assert state.what == "state" and tracker.state("cam1")["events"] == {"novel": "cam1:9:novel"}


def test_camera_ids_are_percent_encoded_in_topics():
    config = MqttConfig(url="mqtt://broker")
    assert config.topic("videos/a+b#.mp4", "state") == "clipwatch/videos%2Fa%2Bb%23.mp4/state"
    assert config.topic() == EVENTS and config.address == ("broker", 1883, False)
    assert MqttConfig(url="mqtts://broker").address == ("broker", 8883, True)
    assert MqttConfig(url="mqtt://broker:1884", tls=True).address == ("broker", 1884, True)


def test_mqtt_config_section_reads_the_environment(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a sink starts")
    data = {"bundle": str(BUNDLE), "alerts": {"mqtt": {
        "url": "mqtt://${MQTT_HOST:-broker}:1883", "username": "clipwatch", "password": "${MQTT_PASSWORD}",
        "qos": "${MQTT_QOS:-2}", "retain": "true", "tls": "ca.pem", "topic_prefix": "home/clipwatch"}}}
    config = parse_config(data, base=tmp_path, environ={"MQTT_PASSWORD": "s3cr3t-pass"}).alerts.mqtt
    assert (config.url, config.qos, config.retain, config.tls) == ("mqtt://broker:1883", 2, True, ca.resolve())
    assert config.password.get_secret_value() == "s3cr3t-pass" and "s3cr3t" not in repr(config)
    assert parse_config({"bundle": str(BUNDLE)}).alerts.mqtt is None


@pytest.mark.parametrize(
    "mqtt, message",
    [
        ({"url": "http://broker"}, r"alerts\.mqtt\.url: http://broker: MQTT URL must be mqtt://host"),
        ({"url": "mqtt://u:p@broker"}, r"alerts\.mqtt\.url: put MQTT credentials in username and password"),
        ({"url": "mqtt://broker/topic"}, r"alerts\.mqtt\.url: mqtt://broker/topic: an MQTT URL has no path"),
        ({"url": "mqtt://broker", "topic_prefix": "a/#"}, r"alerts\.mqtt\.topic_prefix: 'a/#': topic prefix must"),
        ({"url": "mqtt://broker", "qos": 3}, r"alerts\.mqtt\.qos: Input should be less than or equal to 2"),
        ({"url": "mqtt://broker", "tls": "missing.pem"}, r"alerts\.mqtt\.tls: .*missing\.pem: no such CA file"),
        ({"url": "mqtt://broker", "password": "x"}, r"alerts\.mqtt: password needs a username"),
        ({"url": "mqtt://broker", "qos ": 1}, r"alerts\.mqtt\.qos : unknown key \(did you mean 'qos'\?\)"),
        ({"url": "mqtt://broker", "password": "${NOPE}", "username": "u"},
         r"alerts\.mqtt: environment variable NOPE is not set"),
    ],
)
def test_bad_mqtt_config_is_refused_with_one_line(tmp_path, mqtt, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_config({"bundle": str(BUNDLE), "alerts": {"mqtt": mqtt}}, base=tmp_path, environ={})
    assert "\n" not in str(error.value)


def test_a_bad_ca_file_is_refused_when_the_sink_starts(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    with pytest.raises(AlertConfigError, match=r"^mqtt sink: tls: .*ca\.pem: "):
        MqttSink({"url": "mqtts://127.0.0.1:1", "tls": str(ca)})
