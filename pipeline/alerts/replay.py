"""Re-send dead-lettered webhook deliveries (``clipwatch alerts replay``), once each, through the same signed POST.

A replayed delivery keeps its body bytes and idempotency key, so a receiver that saw it before recognises it. A
success is recorded in the delivery ledger as ``delivered`` (superseding ``dead_lettered``), so replaying again
skips it; a failure leaves the ledger and the dead-letter file as they were. The ledger is locked while this runs,
so it refuses to run beside a sink that has the same ledger open.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import requests

from pipeline.alerts.alert import canonical_json
from pipeline.alerts.delivery import post_alert
from pipeline.alerts.errors import JournalError, validate_config
from pipeline.alerts.journal import JsonlJournal
from pipeline.alerts.ledger import DeliveryLedger
from pipeline.alerts.webhook import WebhookConfig
from pipeline.errors import redact


@dataclass(frozen=True)
class ReplayOutcome:
    """What became of one dead letter: `status` is ``delivered``, ``already_delivered`` or ``failed``."""

    key: str
    url: str
    status: str
    reason: str

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def __str__(self) -> str:
        return f"{self.status} {self.key}" + (f" {redact(self.url)}" if self.url else "") + f": {self.reason}"


def replay_dead_letters(config: WebhookConfig | Mapping, keys: Collection[str] | None = None) -> list[ReplayOutcome]:
    """POST each dead letter (all, or those whose idempotency key is in `keys`) once; one outcome per delivery.

    A requested key without a dead letter is reported as failed; so is a dead letter for a URL no longer configured.
    """
    config = validate_config(WebhookConfig, config, "webhook sink")
    secret = config.secret.get_secret_value().encode()
    ledger = DeliveryLedger(config.ledger_path)
    try:
        letters = _dead_letters(config, keys)
        outcomes = [ReplayOutcome(key, "", "failed", "not in the dead-letter file")
                    for key in sorted(set(keys or ()) - {key for _, key in letters})]
        with requests.Session() as session:
            session.trust_env = config.trust_env
            for (url, key), record in letters.items():
                outcomes.append(_replay_one(config, ledger, session, secret, url, key, record))
    finally:
        ledger.close()
    return outcomes


def _dead_letters(config: WebhookConfig, keys: Collection[str] | None) -> dict[tuple[str, str], dict]:
    """The dead letters to replay, by (url, key), the latest record of each, in file order."""
    if not config.dead_letter_path.exists():
        return {}
    journal = JsonlJournal(config.dead_letter_path)
    journal.close()
    letters: dict[tuple[str, str], dict] = {}
    for number, record in enumerate(journal.existing, start=1):
        url, key, body = record.get("url"), record.get("idempotency_key"), record.get("body")
        if not isinstance(url, str) or not isinstance(key, str) or not isinstance(body, dict):
            raise JournalError(config.dead_letter_path, number, "dead letter without url, idempotency_key and body")
        if body.get("idempotency_key") != key:
            raise JournalError(config.dead_letter_path, number, f"body of {key} carries another idempotency key")
        if keys is None or key in keys:
            letters.pop((url, key), None)
            letters[url, key] = record
    return letters


def _replay_one(config: WebhookConfig, ledger: DeliveryLedger, session: requests.Session, secret: bytes,
                url: str, key: str, record: dict) -> ReplayOutcome:
    if ledger.final.get((url, key)) == "delivered":
        return ReplayOutcome(key, url, "already_delivered", "the ledger records it as delivered")
    if url not in config.urls:
        return ReplayOutcome(key, url, "failed", "not a configured webhook URL")
    result = post_alert(session, url, canonical_json(record["body"]), key, secret, config.timeout_s, config.signature)
    if not result.ok:
        return ReplayOutcome(key, url, "failed", result.reason)
    ledger.settled(url, key, "delivered", int(record.get("attempts") or 0) + 1, result.status)
    return ReplayOutcome(key, url, "delivered", result.reason)
