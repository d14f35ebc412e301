"""Alerting: rules with k-of-n smoothing and cooldowns, a durable JSONL alert log, signed webhook delivery.

    rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 3, "cooldown_s": 30}, "adversarial": {}}})
    log = JsonlSink("alerts.jsonl")
    hooks = WebhookSink({"urls": [...], "secret": "...", "ledger_path": ..., "dead_letter_path": ...})

    alert = rules.evaluate(ScoredClip.from_mapping(verdict))   # pure and deterministic; Alert or None
    if alert is not None:
        log.write(alert)          # once per idempotency key "stream_id:seq:kind", fsync'd
        hooks.submit(alert)       # background POSTs, retried, in order per stream, at most once per URL

Receivers check ``X-Clipwatch-Signature`` with `verify_signature(raw_body, header, secret)`; the body follows
``alert.schema.json`` (`validate_alert_body`). The header names and `sign_body` live in `pipeline.alerts.signing`,
the specific error classes (all `AlertError`s) in `pipeline.alerts.errors`.
"""

from pipeline.alerts.alert import Alert, ScoredClip, store_thumbnail
from pipeline.alerts.delivery import RetryPolicy
from pipeline.alerts.errors import AlertError
from pipeline.alerts.jsonl_sink import JsonlSink
from pipeline.alerts.rules import AlertRules, AlertRulesConfig
from pipeline.alerts.schema import validate_alert_body
from pipeline.alerts.signing import verify_signature
from pipeline.alerts.webhook import WebhookConfig, WebhookSink

__all__ = [
    "Alert",
    "AlertError",
    "AlertRules",
    "AlertRulesConfig",
    "JsonlSink",
    "RetryPolicy",
    "ScoredClip",
    "WebhookConfig",
    "WebhookSink",
    "store_thumbnail",
    "validate_alert_body",
    "verify_signature",
]
