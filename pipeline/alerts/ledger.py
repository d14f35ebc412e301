"""The webhook delivery ledger: a durable outbox and the record of what reached each URL.

Records (one JSON line each):

* ``{"op": "queued", "url", "key", "stream_id", "body"}``: written before a delivery is attempted, with the exact
  body text, so an alert accepted by `WebhookSink.submit` survives a crash and is resumed, in order, on restart.
* ``{"op": "attempted", "url", "key", "attempts", "first_attempt_at", "next_attempt_at", "reason"}``: a failed
  attempt and when the next one is due (unix time), so a restarted sink resumes the retry schedule where it was.
* ``{"op": "delivered" | "dead_lettered", "url", "key", "attempts", "status", "at"}``: the delivery is final;
  the sink never POSTs the same (url, key) again. Only ``clipwatch alerts replay`` may turn a dead letter into
  ``delivered`` later; the last final record wins.

On open the file is compacted (queued and attempted records of finished deliveries, superseded records dropped),
and ``<ledger>.lock`` is locked for as long as the ledger is open: one process writes a ledger at a time.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from typing import Any

from pipeline.alerts.errors import AlertError, JournalError
from pipeline.alerts.journal import JsonlJournal

FINAL_OPS = ("delivered", "dead_lettered")


@dataclass(frozen=True)
class QueuedDelivery:
    """A delivery accepted but not finished: what a restarted sink resumes."""

    url: str
    key: str
    stream_id: str
    body: bytes


@dataclass(frozen=True)
class Progress:
    """Where a delivery's retry schedule stands: failed attempts so far and when (unix time) the next is due."""

    attempts: int
    first_attempt_at: float
    next_attempt_at: float


class DeliveryLedger:
    """The outbox and final outcomes of webhook deliveries, keyed by (url, idempotency key). Not thread-safe.

    `final` maps each finished (url, key) to its op; `pending` lists the unfinished deliveries in queue order and
    `progress` their retry schedule (only those already attempted).
    """

    def __init__(self, path: str | os.PathLike):
        self._lock_file = _lock(f"{os.fspath(path)}.lock")
        try:
            self._journal = JsonlJournal(path)
        except BaseException:
            self._lock_file.close()
            raise
        self.path = self._journal.path
        self.final: dict[tuple[str, str], str] = {}
        finals: dict[tuple[str, str], dict[str, Any]] = {}
        queued: dict[tuple[str, str], QueuedDelivery] = {}
        attempted: dict[tuple[str, str], dict[str, Any]] = {}
        for number, record in enumerate(self._journal.existing, start=1):
            op, url, key = record.get("op"), record.get("url"), record.get("key")
            if not isinstance(url, str) or not isinstance(key, str):
                raise JournalError(self.path, number, "ledger record without url and key")
            try:
                if op == "queued":
                    queued[url, key] = QueuedDelivery(url, key, str(record["stream_id"]), str(record["body"]).encode())
                elif op == "attempted":
                    self._progress(record)  # validated now, used below
                    attempted[url, key] = record
                elif op in FINAL_OPS:
                    finals[url, key] = record
                    self.final[url, key] = op
                else:
                    raise JournalError(self.path, number, f"unknown ledger op {op!r}")
            except KeyError as exc:
                raise JournalError(self.path, number, f"{op} record without {exc}") from None
            except (TypeError, ValueError) as exc:
                raise JournalError(self.path, number, f"{op} record with a bad value: {exc}") from None
        self.pending: list[QueuedDelivery] = [q for k, q in queued.items() if k not in self.final]
        self.progress: dict[tuple[str, str], Progress] = {
            (q.url, q.key): self._progress(attempted[q.url, q.key]) for q in self.pending if (q.url, q.key) in attempted
        }
        kept = list(finals.values())
        for q in self.pending:
            kept.append(self._queued_record(q))
            if (q.url, q.key) in attempted:
                kept.append(attempted[q.url, q.key])
        if len(kept) < len(self._journal.existing):
            self._journal.rewrite(kept)
        self._journal.existing = []

    def queued(self, delivery: QueuedDelivery) -> None:
        self._journal.append(self._queued_record(delivery))

    def attempted(self, url: str, key: str, progress: Progress, reason: str) -> None:
        """Record a failed attempt and when the next one is due."""
        self._journal.append({"op": "attempted", "url": url, "key": key, "attempts": progress.attempts,
                              "first_attempt_at": progress.first_attempt_at,
                              "next_attempt_at": progress.next_attempt_at, "reason": reason})

    def settled(self, url: str, key: str, op: str, attempts: int, status: int | None) -> None:
        if op not in FINAL_OPS:
            raise ValueError(f"unknown final op {op!r}")
        record = {"op": op, "url": url, "key": key, "attempts": attempts, "status": status, "at": time.time()}
        self._journal.append(record)
        self.final[url, key] = op

    def close(self) -> None:
        self._journal.close()
        self._lock_file.close()

    @staticmethod
    def _progress(record: dict[str, Any]) -> Progress:
        return Progress(int(record["attempts"]), float(record["first_attempt_at"]), float(record["next_attempt_at"]))

    @staticmethod
    def _queued_record(delivery: QueuedDelivery) -> dict[str, Any]:
        return {
            "op": "queued",
            "url": delivery.url,
            "key": delivery.key,
            "stream_id": delivery.stream_id,
            "body": delivery.body.decode(),
        }


def _lock(path: str):
    """`path` opened and exclusively locked (released when closed, or when the process dies)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlertError(f"{path}: the webhook ledger is in use by another process (a running sink?); "
                         "stop it first") from None
    return handle
