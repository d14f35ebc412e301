"""Alerting: rules with k-of-n smoothing and cooldowns, a durable JSONL alert log, signed webhook delivery, MQTT events.

    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 3, "cooldown_s": 30}, "adversarial": {}}})
    log = JsonlSink("alerts.jsonl")
    hooks = WebhookSink({"urls": [...], "secret": "...", "ledger_path": ..., "dead_letter_path": ...})
    mqtt = MqttSink({"url": "mqtt://broker:1883"})

    clip = ScoredClip.from_mapping(verdict)
    alert = rules.evaluate(clip)  # pure and deterministic; Alert or None
    if alert is not None:
        log.write(alert)          # once per idempotency key "stream_id:seq:kind", fsync'd
        hooks.submit(alert)       # background POSTs, retried, in order per stream, at most once per URL
        mqtt.submit(alert)        # a new or updated event on <prefix>/events, the camera's retained state
    mqtt.observe(clip.stream_id, clip.verdict)   # every verdict: normal clips end events

Receivers check ``X-Clipwatch-Signature`` with `check_signature(raw_body, header, secret)`, which raises
`SignatureError` for a bad, malformed or stale (replayed) signature, or with `verify_signature` (a bool, which also
accepts legacy v1 headers); the body follows ``alert.schema.json`` (`validate_alert_body`). The header names and
the signers live in `pipeline.alerts.signing`, the specific error classes (all `AlertError`s) in
`pipeline.alerts.errors`.
"""

from pipeline.alerts.alert import Alert, ScoredClip, store_thumbnail
from pipeline.alerts.delivery import RetryPolicy
from pipeline.alerts.errors import AlertError, SignatureError
from pipeline.alerts.events import EventTracker
from pipeline.alerts.jsonl_sink import JsonlSink
from pipeline.alerts.mqtt import MqttConfig, MqttSink
from pipeline.alerts.rules import AlertRules, AlertRulesConfig
from pipeline.alerts.schema import validate_alert_body
from pipeline.alerts.signing import check_signature, verify_signature
from pipeline.alerts.webhook import WebhookConfig, WebhookSink

__all__ = [
    "Alert",
    "AlertError",
    "AlertRules",
    "AlertRulesConfig",
    "EventTracker",
    "JsonlSink",
    "MqttConfig",
    "MqttSink",
    "RetryPolicy",
    "ScoredClip",
    "SignatureError",
    "WebhookConfig",
    "WebhookSink",
    "check_signature",
    "store_thumbnail",
    "validate_alert_body",
    "verify_signature",
]
