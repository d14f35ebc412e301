"""Alerting: rules with k-of-n smoothing and cooldowns, a durable JSONL alert log, signed webhook delivery.

    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 3, "cooldown_s": 30}, "adversarial": {}}})
    log = JsonlSink("alerts.jsonl")
    hooks = WebhookSink({"urls": [...], "secret": "...", "ledger_path": ..., "dead_letter_path": ...})

    alert = rules.evaluate(ScoredClip.from_mapping(verdict))   # pure and deterministic; Alert or None
    if alert is not None:
        log.write(alert)          # once per idempotency key "stream_id:seq:kind", fsync'd
        hooks.submit(alert)       # background POSTs, retried, in order per stream, at most once per URL

Receivers check ``X-Clipwatch-Signature`` with `verify_signature(raw_body, header, secret)`; the body follows
``alert.schema.json`` (`validate_alert_body`).
"""

from pipeline.alerts.alert import SCHEMA_VERSION, Alert, ScoredClip, Smoothing, ThumbnailRef, store_thumbnail
from pipeline.alerts.delivery import RetryPolicy
from pipeline.alerts.errors import (
    AlertConfigError,
    AlertError,
    AlertInputError,
    AlertSchemaError,
    JournalError,
    SinkClosedError,
)
from pipeline.alerts.jsonl_sink import JsonlSink
from pipeline.alerts.rules import AlertRules, AlertRulesConfig, KindRule
from pipeline.alerts.schema import alert_schema, validate_alert_body
from pipeline.alerts.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_body,
    verify_signature,
)
from pipeline.alerts.webhook import WebhookConfig, WebhookSink, WebhookStats

__all__ = [
    "Alert",
    "AlertConfigError",
    "AlertError",
    "AlertInputError",
    "AlertRules",
    "AlertRulesConfig",
    "AlertSchemaError",
    "IDEMPOTENCY_HEADER",
    "JournalError",
    "JsonlSink",
    "KindRule",
    "RetryPolicy",
    "SCHEMA_VERSION",
    "SIGNATURE_HEADER",
    "ScoredClip",
    "SinkClosedError",
    "Smoothing",
    "TIMESTAMP_HEADER",
    "ThumbnailRef",
    "WebhookConfig",
    "WebhookSink",
    "WebhookStats",
    "alert_schema",
    "sign_body",
    "store_thumbnail",
    "validate_alert_body",
    "verify_signature",
]
