"""Webhook delivery against a real HTTP server on 127.0.0.1: signatures, retries, order, idempotency, dead letters."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import pytest
from webhook_server import RecordedRequest, Reply, WebhookServer, refused_url

from pipeline.alerts import Alert, RetryPolicy, ScoredClip, WebhookSink, validate_alert_body, verify_signature
from pipeline.alerts.errors import AlertConfigError, SinkClosedError
from pipeline.alerts.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_body

SECRET = "test-shared-secret"


def alert(seq: int, stream: str = "cam1", kind: str = "novel") -> Alert:
    clip = ScoredClip(
        stream_id=stream, seq=seq, verdict=kind, fused_score=6.0, p_value=0.004, clip_start=float(seq),
        clip_end=seq + 1.0, scored_at=1_700_000_000.0 + seq, reasons=("low likelihood at conv5",),
        prediction="walking", softmax=0.5, layer_scores={"conv5": -88.0},
    )
    return Alert.from_clip(clip, kind)


def config(tmp_path, urls: list[str], **overrides) -> dict:
    retry = {"max_attempts": 5, "base_delay_s": 0.02, "max_delay_s": 0.1, **overrides.pop("retry", {})}
    return {
        "urls": urls, "secret": SECRET, "ledger_path": tmp_path / "state" / "ledger.jsonl",
        "dead_letter_path": tmp_path / "state" / "dead.jsonl", "timeout_s": 1.0, "retry": retry,
        "trust_env": False, **overrides,
    }


def key_of(request: RecordedRequest) -> str:
    return request.header(IDEMPOTENCY_HEADER)


def dead_letters(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "state" / "dead.jsonl").read_bytes().splitlines()]


def assert_in_order_per_stream(requests: list[RecordedRequest]) -> None:
    """Per stream, seqs are tried one at a time: a seq is tried only after the previous one's final attempt."""
    by_stream: dict[str, list[RecordedRequest]] = defaultdict(list)
    for request in requests:
        by_stream[json.loads(request.body)["stream_id"]].append(request)
    for stream, attempts in by_stream.items():
        seqs = [json.loads(r.body)["seq"] for r in attempts]
        changes = [i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1]]
        assert all(seqs[i] > seqs[i - 1] for i in changes), f"{stream}: attempts out of order {seqs}"
        assert all(attempts[i - 1].status != 500 for i in changes), f"{stream}: moved on after a retryable failure"


def test_signature_is_an_hmac_of_the_exact_body():
    body = alert(1).to_json_bytes()
    header = sign_body(body, SECRET)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(body, header, SECRET) and verify_signature(body, header, SECRET.encode())
    assert verify_signature(body, f" {header} ", SECRET)
    assert not verify_signature(body + b" ", header, SECRET)
    assert not verify_signature(body, header, "other-secret")
    assert not verify_signature(body, header.removeprefix("sha256="), SECRET)
    assert not verify_signature(body, None, SECRET) and not verify_signature(body, "sha256=zz", SECRET)


def test_back_off_is_exponential_capped_and_deterministic_with_a_seed():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    assert [policy.delay(a) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(1, retry_after=3) == 3.0 and policy.delay(1, retry_after=60) == 4.0
    jittered = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0, jitter=0.5, seed=11)
    draws = [[jittered.delay(a, random.Random(jittered.seed)) for a in range(1, 6)] for _ in range(2)]
    assert draws[0] == draws[1]
    assert all(0.5 * plain <= d <= plain for d, plain in zip(draws[0], [0.5, 1.0, 2.0, 4.0, 4.0], strict=True))
    assert draws[0] != [0.5, 1.0, 2.0, 4.0, 4.0]


def test_default_schedule_retries_for_a_day_with_capped_jittered_delays():
    policy = RetryPolicy()
    assert [policy.delay(a) for a in (1, 2, 3)] == [1.0, 2.0, 4.0] and policy.delay(30) == 600.0
    rng, age, delays = random.Random(5), 0.0, []
    while (delay := policy.next_delay(len(delays) + 1, age, rng)) is not None:
        delays.append(delay)
        age += delay
    assert age == pytest.approx(86_400.0), "the last attempt falls at max_age_s, then the delivery is given up"
    assert 140 < len(delays) < 200 and max(delays) <= 600.0
    assert all(0.8 * policy.delay(a) <= d <= policy.delay(a) for a, d in enumerate(delays[:-1], start=1))
    assert len(set(delays[20:-1])) > 1, "jittered, so senders do not retry in lockstep"
    assert RetryPolicy(max_attempts=3).next_delay(3, 0.0) is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"urls": ["ftp://127.0.0.1/x"]}, r"^webhook sink: urls: ftp://127\.0\.0\.1/x: webhook URL must be http"),
        ({"urls": ["http://127.0.0.1:9/a", "http://127.0.0.1:9/a"]}, "urls: webhook URLs must be distinct$"),
        ({"urls": []}, r"^webhook sink: urls: List should have at least 1 item"),
        ({"secret": ""}, "secret: webhook secret must not be empty$"),
        ({"retry": {"base_delay_s": 5, "max_delay_s": 1}}, "retry: base_delay_s must not exceed max_delay_s$"),
        ({"retry": {"max_attempts": None, "max_age_s": None}}, "retry: set max_attempts or max_age_s, or a dead"),
    ],
)
def test_bad_webhook_config_is_refused_with_one_line(tmp_path, change, message):
    with pytest.raises(AlertConfigError, match=message) as error:
        WebhookSink({**config(tmp_path, ["http://127.0.0.1:9/hook"]), **change})
    assert "\n" not in str(error.value)


def test_delivers_signed_schema_valid_bodies(tmp_path):
    alerts = [alert(0), alert(0, stream="cam2"), alert(1)]
    with WebhookServer(secret=SECRET) as server, WebhookSink(config(tmp_path, [server.url])) as sink:
        assert [sink.submit(a) for a in alerts] == [True, True, True]
        assert sink.flush(timeout=5)
        stats = sink.stats
    assert (stats.submitted, stats.delivered, stats.dead_lettered, stats.retries, stats.pending) == (3, 3, 0, 0, 0)
    received = {key_of(r): r for r in server.requests}
    assert len(server.requests) == 3 and sorted(received) == sorted(a.idempotency_key for a in alerts)
    for a in alerts:
        request = received[a.idempotency_key]
        assert request.method == "POST" and request.path == "/hook" and request.status == 200
        assert request.signature_valid is True
        assert verify_signature(request.body, request.header(SIGNATURE_HEADER), SECRET)
        assert request.body == a.to_json_bytes()
        assert request.header("Content-Type") == "application/json"
        assert abs(int(request.header(TIMESTAMP_HEADER)) - time.time()) < 30
        validate_alert_body(request.body)
    assert dead_letters(tmp_path) == []


def test_a_redelivered_clip_is_posted_once_also_across_restarts(tmp_path):
    with WebhookServer(secret=SECRET) as server:
        with WebhookSink(config(tmp_path, [server.url])) as sink:
            assert sink.submit(alert(0)) is True
            assert sink.submit(alert(0)) is False  # still queued or in flight: not queued again
            assert sink.flush(timeout=5)
            assert sink.submit(alert(0)) is False  # delivered
            assert (sink.stats.submitted, sink.stats.duplicates) == (1, 2)
        with WebhookSink(config(tmp_path, [server.url])) as restarted:
            assert restarted.submit(alert(0)) is False
            assert restarted.submit(alert(1)) is True
            assert restarted.flush(timeout=5)
        ledger = [json.loads(line) for line in (tmp_path / "state" / "ledger.jsonl").read_bytes().splitlines()]
    assert [key_of(r) for r in server.requests] == ["cam1:0:novel", "cam1:1:novel"]
    assert [(r["op"], r["key"]) for r in ledger] == [("delivered", "cam1:0:novel"), ("queued", "cam1:1:novel"),
                                                     ("delivered", "cam1:1:novel")]


def test_after_500s_everything_is_delivered_in_order_per_stream(tmp_path):
    alerts = [alert(seq, stream=f"cam{s}") for seq in range(4) for s in range(3)]
    cfg = config(tmp_path, [], workers_per_url=3, retry={"max_attempts": 20, "base_delay_s": 0.01, "max_delay_s": 0.05})
    with WebhookServer(secret=SECRET) as server:
        server.plan(Reply.fail(500), times=6)
        with WebhookSink({**cfg, "urls": [server.url]}) as sink:
            assert all(sink.submit(a) for a in alerts)
            assert sink.flush(timeout=10)
            stats = sink.stats
    assert (stats.delivered, stats.retries, stats.dead_lettered) == (12, 6, 0)
    assert [r.status for r in server.requests].count(500) == 6
    accepted = server.accepted()
    assert sorted(key_of(r) for r in accepted) == sorted(a.idempotency_key for a in alerts)
    for s in range(3):
        assert [json.loads(r.body)["seq"] for r in accepted if f'"cam{s}"' in r.body.decode()] == [0, 1, 2, 3]
    assert_in_order_per_stream(server.requests)
    assert dead_letters(tmp_path) == []


def test_a_hanging_endpoint_is_retried_after_the_timeout_and_delivered_later(tmp_path):
    with WebhookServer(secret=SECRET) as server:
        server.plan(Reply.hang(2.0), times=2)
        with WebhookSink(config(tmp_path, [server.url], timeout_s=0.2)) as sink:
            started = time.monotonic()
            sink.submit(alert(0))
            sink.submit(alert(1))
            assert sink.flush(timeout=5)
            elapsed = time.monotonic() - started
            stats = sink.stats
        requests = server.requests
    assert [(key_of(r), r.status) for r in requests] == [
        ("cam1:0:novel", None), ("cam1:0:novel", None), ("cam1:0:novel", 200), ("cam1:1:novel", 200),
    ]
    assert elapsed >= 0.4  # two client timeouts of 0.2 s
    assert (stats.delivered, stats.retries, stats.dead_lettered) == (2, 2, 0)


def test_an_endpoint_that_never_recovers_is_dead_lettered_after_the_last_attempt(tmp_path):
    alerts = [alert(0), alert(1), alert(0, stream="cam2")]
    with WebhookServer(secret=SECRET) as server:
        server.default = Reply.fail(503)
        with WebhookSink(config(tmp_path, [server.url], retry={"max_attempts": 3})) as sink:
            assert all(sink.submit(a) for a in alerts)
            assert sink.flush(timeout=5)
            assert sink.submit(alert(1)) is False  # dead-lettered is final: no second round of POSTs
            stats = sink.stats
        with WebhookSink(config(tmp_path, [server.url], retry={"max_attempts": 3})) as restarted:
            assert restarted.submit(alert(0)) is False
        requests = server.requests
    assert (stats.delivered, stats.dead_lettered, stats.retries) == (0, 3, 6)
    assert [key_of(r) for r in requests if '"cam1"' in r.body.decode()] == ["cam1:0:novel"] * 3 + ["cam1:1:novel"] * 3
    assert len(requests) == 9
    letters = {d["idempotency_key"]: d for d in dead_letters(tmp_path)}
    assert sorted(letters) == sorted(a.idempotency_key for a in alerts)
    for a in alerts:
        letter = letters[a.idempotency_key]
        assert letter["reason"] == "HTTP 503 Service Unavailable" and letter["error"] == "http_status"
        assert (letter["status"], letter["attempts"], letter["url"]) == (503, 3, server.url)
        assert letter["stream_id"] == a.stream_id and letter["body"] == a.to_body()
        assert letter["first_attempt_at"] <= letter["dead_lettered_at"]


def test_a_client_error_is_dead_lettered_without_retries(tmp_path):
    with WebhookServer(secret=SECRET) as server:
        with WebhookSink({**config(tmp_path, [server.url]), "secret": "not-the-receivers-secret"}) as sink:
            sink.submit(alert(0))
            assert sink.flush(timeout=5)
        requests = server.requests
    assert [(r.signature_valid, r.status) for r in requests] == [(False, 401)]
    [letter] = dead_letters(tmp_path)
    assert (letter["reason"], letter["status"], letter["attempts"]) == ("HTTP 401 Unauthorized", 401, 1)


def test_retry_after_from_the_server_is_honoured_up_to_the_maximum_delay(tmp_path):
    with WebhookServer(secret=SECRET) as server:
        server.plan(Reply.fail(429, retry_after=30))
        retry = {"base_delay_s": 0.01, "max_delay_s": 0.3}
        with WebhookSink(config(tmp_path, [server.url], retry=retry)) as sink:
            sink.submit(alert(0))
            assert sink.flush(timeout=5)
        first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert 0.3 <= second.received_at - first.received_at < 5.0


def test_connection_refused_is_dead_lettered_with_the_reason(tmp_path):
    url = refused_url()
    with WebhookSink(config(tmp_path, [url], retry={"max_attempts": 3})) as sink:
        sink.submit(alert(0))
        assert sink.flush(timeout=5)
        assert (sink.stats.dead_lettered, sink.stats.retries) == (1, 2)
    [letter] = dead_letters(tmp_path)
    assert (letter["reason"], letter["error"], letter["status"]) == ("connection refused", "connection_refused", None)
    assert (letter["url"], letter["attempts"], letter["idempotency_key"]) == (url, 3, "cam1:0:novel")


def test_a_dead_endpoint_does_not_hold_up_a_healthy_one(tmp_path):
    dead = refused_url()
    alerts = [alert(0, stream=f"cam{s}") for s in range(3)]
    with WebhookServer(secret=SECRET) as server:
        cfg = config(tmp_path, [dead, server.url], retry={"max_attempts": 3, "base_delay_s": 0.25, "max_delay_s": 0.25})
        with WebhookSink(cfg) as sink:
            assert all(sink.submit(a) for a in alerts)
            server.wait_for(lambda requests: sum(r.status == 200 for r in requests) == 3)
            assert sink.stats.dead_lettered == 0  # the dead URL's lanes are still backing off (>= 0.5 s)
            assert sink.flush(timeout=5)
            assert (sink.stats.delivered, sink.stats.dead_lettered) == (3, 3)
    assert {(d["url"], d["error"]) for d in dead_letters(tmp_path)} == {(dead, "connection_refused")}


def test_unfinished_deliveries_resume_in_order_after_a_restart(tmp_path):
    alerts = [alert(0), alert(1), alert(0, stream="cam2")]
    cfg = config(tmp_path, [], retry={"max_attempts": 50, "base_delay_s": 0.3, "max_delay_s": 0.3})
    with WebhookServer(secret=SECRET) as server:
        server.default = Reply.fail(500)
        cfg["urls"] = [server.url]
        first = WebhookSink(cfg)
        assert all(first.submit(a) for a in alerts)
        server.wait_for(lambda requests: len(requests) >= 2)
        assert first.close(timeout=0.05) is False
        assert first.flush() is False  # closed with work left: returns at once instead of waiting forever
        assert first.stats.pending == 3
        with pytest.raises(SinkClosedError):
            first.submit(alert(2))
        server.default = Reply.accept()
        with WebhookSink(cfg) as resumed:
            assert resumed.flush(timeout=5)
            assert resumed.submit(alert(1)) is False
            assert (resumed.stats.submitted, resumed.stats.delivered) == (0, 3)
        WebhookSink(cfg).close()  # reopening compacts the ledger
        accepted = [key_of(r) for r in server.accepted()]
    assert sorted(accepted) == sorted(a.idempotency_key for a in alerts)
    assert accepted.index("cam1:0:novel") < accepted.index("cam1:1:novel")
    assert_in_order_per_stream(server.requests)
    ledger = [json.loads(line) for line in (tmp_path / "state" / "ledger.jsonl").read_bytes().splitlines()]
    assert [r["op"] for r in ledger] == ["delivered"] * 3


def ledger_ops(tmp_path) -> list[tuple[str, str, int | None]]:
    records = [json.loads(line) for line in (tmp_path / "state" / "ledger.jsonl").read_bytes().splitlines()]
    return [(r["op"], r["key"], r.get("attempts")) for r in records]


def test_a_restarted_sink_resumes_the_retry_schedule_where_the_ledger_left_it(tmp_path):
    cfg = config(tmp_path, [], retry={"max_attempts": 2, "base_delay_s": 1.0, "max_delay_s": 1.0, "jitter": 0.0})
    with WebhookServer(secret=SECRET) as server:
        server.default = Reply.fail(503)
        cfg["urls"] = [server.url]
        first = WebhookSink(cfg)
        first.submit(alert(0))
        server.wait_for(lambda requests: len(requests) == 1 and requests[0].status == 503)
        assert first.close(timeout=0.2) is False  # next attempt due in 1 s: left in the ledger
        assert ledger_ops(tmp_path) == [("queued", "cam1:0:novel", None), ("attempted", "cam1:0:novel", 1)]
        with WebhookSink(cfg) as resumed:
            assert resumed.flush(timeout=5)
        first_try, second_try = server.requests
    assert second_try.received_at - first_try.received_at >= 0.9, "the back-off is kept, not restarted"
    [letter] = dead_letters(tmp_path)
    assert letter["attempts"] == 2 and letter["first_attempt_at"] <= first_try.received_at + 0.1


def test_close_does_not_wait_for_a_long_back_off(tmp_path):
    cfg = config(tmp_path, [], retry={"base_delay_s": 60.0, "max_delay_s": 600.0})
    with WebhookServer(secret=SECRET) as server:
        server.default = Reply.fail(503)
        cfg["urls"] = [server.url]
        sink = WebhookSink(cfg)
        sink.submit(alert(0))
        server.wait_for(lambda requests: len(requests) == 1 and requests[0].status == 503)
        started = time.monotonic()
        assert sink.close(timeout=30) is False
        assert time.monotonic() - started < 2.0
        reopened = WebhookSink(cfg)
        time.sleep(0.3)
        assert len(server.requests) == 1 and reopened.stats.pending == 1
        assert reopened.close(timeout=30) is False
    [(_, _, attempts)] = [op for op in ledger_ops(tmp_path) if op[0] == "attempted"]
    assert attempts == 1
