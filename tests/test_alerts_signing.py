"""Webhook signatures v2 (``t=<unix s>,v1=<hex>`` over ``"<t>." + body``): the receiver's check refuses tampered,
malformed, stale and future-dated requests, also through a real HTTP receiver; ``signature: v1`` keeps the old header."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path

import pytest
import requests
from webhook_server import WebhookServer

from pipeline.alerts import Alert, ScoredClip, SignatureError, WebhookSink, check_signature, verify_signature
from pipeline.alerts.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_body,
    sign_timestamped,
)
from pipeline.config import ConfigError, parse_config
from pipeline.errors import ClipwatchError

SECRET = "test-shared-secret"
BUNDLE = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "bundles" / "default"


def alert(seq: int, stream: str = "cam1") -> Alert:
    clip = ScoredClip(stream_id=stream, seq=seq, verdict="novel", fused_score=6.0, p_value=0.004,
                      clip_start=float(seq), clip_end=seq + 1.0, scored_at=1_700_000_000.0 + seq)
    return Alert.from_clip(clip, "novel")


def config(tmp_path, urls: list[str], **overrides) -> dict:
    return {"urls": urls, "secret": SECRET, "ledger_path": tmp_path / "ledger.jsonl",
            "dead_letter_path": tmp_path / "dead.jsonl", "timeout_s": 1.0, "trust_env": False,
            "retry": {"max_attempts": 2, "base_delay_s": 0.02, "max_delay_s": 0.1}, **overrides}


BODY = alert(1).to_json_bytes()
T = 1_700_000_000
V2 = re.compile(r"^t=(\d+),v1=([0-9a-f]{64})$")


def test_v2_signs_the_timestamp_and_the_exact_body():
    header = sign_timestamped(BODY, SECRET, T)
    assert V2.match(header).group(1) == str(T)
    assert header.endswith(hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest())
    assert check_signature(BODY, header, SECRET, now=T) == T
    assert check_signature(BODY, f" {header} ", SECRET.encode(), now=T + 299) == T
    assert check_signature(BODY, header, SECRET, now=T - 299) == T, "a sender clock slightly ahead is tolerated"
    rotated = f"t={T},v1={'0' * 64},v1={header.split('v1=')[1]},v0=ignored"
    assert check_signature(BODY, rotated, SECRET, now=T) == T, "any v1 entry may match; unknown keys are ignored"
    assert verify_signature(BODY, header, SECRET, now=T) and not verify_signature(BODY, header, SECRET, now=T + 301)


@pytest.mark.parametrize(
    "body, header, now, reason, message",
    [
        (BODY + b" ", sign_timestamped(BODY, SECRET, T), T, "mismatch", "does not match the body"),
        (BODY, sign_timestamped(BODY, "other-secret", T), T, "mismatch", "does not match the body"),
        (BODY, sign_timestamped(BODY, SECRET, T + 1).replace(f"t={T + 1}", f"t={T}"), T, "mismatch", "match"),
        (BODY, sign_timestamped(BODY, SECRET, T), T + 301, "stale", r"is 301 s old, over the 300 s tolerance"),
        (BODY, sign_timestamped(BODY, SECRET, T), T - 301, "future", r"is 301 s in the future"),
        (BODY, None, T, "missing", "no X-Clipwatch-Signature header"),
        (BODY, "   ", T, "missing", "no X-Clipwatch-Signature header"),
        (BODY, sign_body(BODY, SECRET), T, "legacy", "v1 'sha256=' signature without a timestamp"),
        (BODY, f"v1={'a' * 64}", T, "malformed", r"expected one t=<unix seconds>"),
        (BODY, f"t=soon,v1={'a' * 64}", T, "malformed", r"expected one t=<unix seconds>"),
        (BODY, f"t={'9' * 5000},v1={'a' * 64}", T, "malformed", r"expected one t=<unix seconds>"),
        (BODY, f"t={T},t={T},v1={'a' * 64}", T, "malformed", r"expected one t=<unix seconds>"),
        (BODY, f"t={T}", T, "malformed", r"no v1=<hex> entry"),
        (BODY, "garbage", T, "malformed", r"'garbage' is not key=value"),
    ],
    ids=["tampered-body", "other-secret", "tampered-timestamp", "stale", "future", "none", "blank", "legacy",
         "no-t", "bad-t", "huge-t", "two-t", "no-v1", "garbage"],
)
def test_check_signature_refuses_with_one_clear_line(body, header, now, reason, message):
    with pytest.raises(SignatureError, match=message) as error:
        check_signature(body, header, SECRET, now=now)
    assert error.value.reason == reason
    assert isinstance(error.value, ClipwatchError)
    assert "\n" not in str(error.value) and SECRET not in str(error.value)
    assert not verify_signature(body, header, SECRET, now=now) or reason == "legacy"


def test_tolerance_is_configurable():
    header = sign_timestamped(BODY, SECRET, T)
    assert check_signature(BODY, header, SECRET, tolerance_s=30, now=T + 30) == T
    with pytest.raises(SignatureError, match="31 s old, over the 30 s tolerance"):
        check_signature(BODY, header, SECRET, tolerance_s=30, now=T + 31)


def test_a_real_receiver_verifies_v2_alerts_and_refuses_replays_and_tampering(tmp_path):
    alerts = [alert(0), alert(1), alert(0, stream="cam2")]
    with WebhookServer(secret=SECRET) as server, WebhookSink(config(tmp_path, [server.url])) as sink:
        for a in alerts:
            sink.submit(a)
        assert sink.flush(timeout=5)
        received = server.requests
        assert len(received) == 3 and all(r.status == 200 and r.signature_valid for r in received)
        for request in received:
            header = request.header(SIGNATURE_HEADER)
            assert V2.match(header), header
            signed_at = check_signature(request.body, header, SECRET)
            assert signed_at == int(request.header(TIMESTAMP_HEADER)) and abs(signed_at - time.time()) < 30

        # An attacker replays a captured request after the tolerance: the receiver answers 401.
        captured = received[0]
        old = int(time.time()) - 600
        replayed = {SIGNATURE_HEADER: sign_timestamped(captured.body, SECRET, old), "Content-Type": "application/json",
                    IDEMPOTENCY_HEADER: captured.header(IDEMPOTENCY_HEADER)}
        assert requests.post(server.url, data=captured.body, headers=replayed, timeout=5).status_code == 401
        with pytest.raises(SignatureError, match="s old, over the 300 s tolerance") as stale:
            check_signature(captured.body, replayed[SIGNATURE_HEADER], SECRET)
        assert stale.value.reason == "stale"

        # A fresh signature over another body: tampering is refused too.
        tampered = captured.body.replace(b'"novel"', b'"normal"', 1)
        assert tampered != captured.body
        forged = {**replayed, SIGNATURE_HEADER: captured.header(SIGNATURE_HEADER)}
        assert requests.post(server.url, data=tampered, headers=forged, timeout=5).status_code == 401
        assert [r.signature_valid for r in server.requests[3:]] == [False, False]


def test_the_v1_flag_keeps_the_legacy_header(tmp_path):
    with WebhookServer(secret=SECRET) as server, \
            WebhookSink(config(tmp_path, [server.url], signature="v1")) as sink:
        sink.submit(alert(0))
        assert sink.flush(timeout=5)
    [request] = server.requests
    assert request.header(SIGNATURE_HEADER) == sign_body(request.body, SECRET)
    assert request.signature_valid is True and request.header(TIMESTAMP_HEADER).isdigit()
    with pytest.raises(SignatureError) as error:
        check_signature(request.body, request.header(SIGNATURE_HEADER), SECRET)
    assert error.value.reason == "legacy"


def test_webhooks_config_chooses_the_scheme_default_v2():
    environ = {"CLIPWATCH_WEBHOOK_SECRET": "s3cret"}
    hooks = {"urls": ["https://hooks.example/a"]}
    default = parse_config({"bundle": BUNDLE, "alerts": {"webhooks": hooks}}, environ=environ)
    assert default.webhook_config(environ).signature == "v2"
    legacy = parse_config({"bundle": BUNDLE, "alerts": {"webhooks": {**hooks, "signature": "${SCHEME}"}}},
                          environ={**environ, "SCHEME": "v1"})
    assert legacy.webhook_config(environ).signature == "v1"
    with pytest.raises(ConfigError, match=r"^config: alerts\.webhooks\.signature: Input should be 'v1' or 'v2'$"):
        parse_config({"bundle": BUNDLE, "alerts": {"webhooks": {**hooks, "signature": "v3"}}}, environ=environ)
