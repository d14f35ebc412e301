"""The webhook delivery ledger: a durable outbox and the record of what reached each URL.

Records (one JSON line each):

* ``{"op": "queued", "url", "key", "stream_id", "body"}``: written before a delivery is attempted, with the exact
  body text, so an alert accepted by `WebhookSink.submit` survives a crash and is resumed, in order, on restart.
* ``{"op": "delivered" | "dead_lettered", "url", "key", "attempts", "status", "at"}``: the delivery is final;
  the same (url, key) is never POSTed again.

On open the file is compacted: queued records of finished deliveries are dropped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from pipeline.alerts.errors import JournalError
from pipeline.alerts.journal import JsonlJournal

FINAL_OPS = ("delivered", "dead_lettered")


@dataclass(frozen=True)
class QueuedDelivery:
    """A delivery accepted but not finished: what a restarted sink resumes."""

    url: str
    key: str
    stream_id: str
    body: bytes


class DeliveryLedger:
    """The outbox and final outcomes of webhook deliveries, keyed by (url, idempotency key). Not thread-safe."""

    def __init__(self, path: str | os.PathLike):
        self._journal = JsonlJournal(path)
        self.path = self._journal.path
        self.final: set[tuple[str, str]] = set()
        queued: dict[tuple[str, str], QueuedDelivery] = {}
        finals: list[dict[str, Any]] = []
        for number, record in enumerate(self._journal.existing, start=1):
            op, url, key = record.get("op"), record.get("url"), record.get("key")
            if not isinstance(url, str) or not isinstance(key, str):
                raise JournalError(self.path, number, "ledger record without url and key")
            if op == "queued":
                try:
                    queued[url, key] = QueuedDelivery(url, key, str(record["stream_id"]), str(record["body"]).encode())
                except KeyError as exc:
                    raise JournalError(self.path, number, f"queued record without {exc}") from None
            elif op in FINAL_OPS:
                if (url, key) not in self.final:
                    self.final.add((url, key))
                    finals.append(record)
            else:
                raise JournalError(self.path, number, f"unknown ledger op {op!r}")
        self.pending: list[QueuedDelivery] = [q for k, q in queued.items() if k not in self.final]
        if len(finals) + len(self.pending) < len(self._journal.existing):
            self._journal.rewrite(finals + [self._queued_record(q) for q in self.pending])
        self._journal.existing = []

    def queued(self, delivery: QueuedDelivery) -> None:
        self._journal.append(self._queued_record(delivery))

    def settled(self, url: str, key: str, op: str, attempts: int, status: int | None) -> None:
        if op not in FINAL_OPS:
            raise ValueError(f"unknown final op {op!r}")
        record = {"op": op, "url": url, "key": key, "attempts": attempts, "status": status, "at": time.time()}
        self._journal.append(record)
        self.final.add((url, key))

    def close(self) -> None:
        self._journal.close()

    @staticmethod
    def _queued_record(delivery: QueuedDelivery) -> dict[str, Any]:
        return {
            "op": "queued",
            "url": delivery.url,
            "key": delivery.key,
            "stream_id": delivery.stream_id,
            "body": delivery.body.decode(),
        }
