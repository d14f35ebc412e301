"""Webhook delivery: signed POSTs from background threads, retried with back-off (by default for up to 24 h), in
order per stream, at most once per (URL, idempotency key), dead-lettered when the retry schedule is exhausted.

Scheduling: each URL has its own worker threads, so a dead endpoint cannot hold up a healthy one. Within a URL
each stream is a *lane*: a FIFO whose head must be delivered or dead-lettered before the next alert of that stream
is tried, while other streams' lanes proceed. A lane waiting for its back-off does not occupy a thread.

Durability: `submit` writes the alert to the delivery ledger (an outbox) before returning, and every failed attempt
records its attempt count and next due time; a sink opened on the same ledger resumes unfinished deliveries in their
original order, on their retry schedule, and never re-sends a finished one. `close` waits only for deliveries due
before its timeout: one backing off for minutes stays in the ledger for the next start.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from pipeline.alerts.alert import Alert
from pipeline.alerts.delivery import AttemptResult, RetryPolicy, post_alert
from pipeline.alerts.errors import SinkClosedError, validate_config
from pipeline.alerts.journal import JsonlJournal
from pipeline.alerts.ledger import DeliveryLedger, Progress, QueuedDelivery
from pipeline.alerts.signing import Scheme
from pipeline.errors import redact

logger = logging.getLogger(__name__)


def check_webhook_urls(urls: list[str]) -> list[str]:
    """`urls` if each is http(s)://host/... and none repeats; ValueError (URL without its password) otherwise."""
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact(url)}: webhook URL must be http(s)://host/...")
    if len(set(urls)) != len(urls):
        raise ValueError("webhook URLs must be distinct")
    return urls


class WebhookConfig(BaseModel):
    """Where and how to POST alerts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str] = Field(min_length=1, description="http(s) endpoints; each receives every alert")
    secret: SecretStr = Field(description="shared HMAC-SHA256 key for X-Clipwatch-Signature")
    signature: Scheme = Field("v2", description="v2: 't=<unix s>,v1=<hex>' over '<t>.<body>' (replays refused); "
                                                "v1: legacy 'sha256=<hex>' of the body alone")
    ledger_path: Path = Field(description="JSONL outbox + record of finished deliveries (idempotency)")
    dead_letter_path: Path = Field(description="JSONL of deliveries that failed for good, with the reason")
    timeout_s: float = Field(5.0, gt=0.0, description="connect and read timeout of one attempt")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    workers_per_url: int = Field(2, ge=1, description="concurrent deliveries per URL (different streams)")
    trust_env: bool = Field(True, description="honour HTTP(S)_PROXY/NO_PROXY from the environment (requests)")

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        return check_webhook_urls(urls)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, secret: SecretStr) -> SecretStr:
        if not secret.get_secret_value():
            raise ValueError("webhook secret must not be empty")
        return secret


@dataclass(frozen=True)
class WebhookStats:
    """Counters for metrics. `delivered`/`dead_lettered`/`retries` count (URL, alert) deliveries."""

    submitted: int
    duplicates: int
    delivered: int
    dead_lettered: int
    retries: int
    pending: int


@dataclass
class _Delivery:
    queued: QueuedDelivery
    attempts: int = 0
    first_attempt_at: float | None = None
    next_attempt_at: float | None = None  # unix time; restored from the ledger after a restart


@dataclass
class _Lane:
    stream_id: str
    items: deque[_Delivery] = field(default_factory=deque)


@dataclass
class _Route:
    url: str
    wake: threading.Condition
    lanes: dict[str, _Lane] = field(default_factory=dict)
    ready: list[tuple[float, int, _Lane]] = field(default_factory=list)


class WebhookSink:
    """POSTs alerts to every configured URL from background threads; `submit` never waits for the network.

        sink = WebhookSink({"urls": ["https://hooks.example/clipwatch"], "secret": "...",
                            "ledger_path": "state/webhook-ledger.jsonl", "dead_letter_path": "state/dead.jsonl"})
        sink.submit(alert)        # True: queued; False: already delivered/queued for every URL
        sink.flush(timeout=10)    # True when everything reached a final outcome
        sink.close()
    """

    def __init__(self, config: WebhookConfig | Mapping):
        self.config = validate_config(WebhookConfig, config, "webhook sink")
        self._secret = self.config.secret.get_secret_value().encode()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._rng = random.Random(self.config.retry.seed)
        self._order = itertools.count()
        self._ledger = DeliveryLedger(self.config.ledger_path)
        self._dead_letters = JsonlJournal(self.config.dead_letter_path)
        self._dead_letters.existing = []
        self._routes = {url: _Route(url, threading.Condition(self._lock)) for url in self.config.urls}
        self._pending: set[tuple[str, str]] = set()
        self._in_flight = 0
        self._counts = dict.fromkeys(("submitted", "duplicates", "delivered", "dead_lettered", "retries"), 0)
        self._closed = self._stopping = False
        with self._lock:
            for queued in self._ledger.pending:
                if queued.url in self._routes:
                    self._enqueue(queued, self._ledger.progress.get((queued.url, queued.key)))
                else:
                    logger.warning("%s: ledger entry for unconfigured URL %s left alone",
                                   queued.key, redact(queued.url))
        self._threads = [
            threading.Thread(target=self._work, args=(route,), name=f"webhook-{index}-{worker}", daemon=True)
            for index, route in enumerate(self._routes.values())
            for worker in range(self.config.workers_per_url)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, alert: Alert) -> bool:
        """Queue `alert` for every URL that has neither received nor queued its key; False if none needed it."""
        body, key = alert.to_json_bytes(), alert.idempotency_key
        with self._lock:
            if self._closed:
                raise SinkClosedError(f"{key}: webhook sink is closed")
            fresh = [
                url for url in self._routes if (url, key) not in self._ledger.final and (url, key) not in self._pending
            ]
            for url in fresh:
                queued = QueuedDelivery(url, key, alert.stream_id, body)
                self._ledger.queued(queued)
                self._enqueue(queued)
            self._counts["submitted" if fresh else "duplicates"] += 1
            return bool(fresh)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued delivery is delivered or dead-lettered.

        Returns False if `timeout` ran out first, or the sink was closed with deliveries left for a restart.
        """
        with self._idle:
            self._idle.wait_for(lambda: not self._pending or self._stopping, timeout)
            return not self._pending

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to `timeout`), then stop the workers; unfinished deliveries stay in the ledger for a restart.

        Stops waiting early when nothing is in flight and no delivery is due before the timeout runs out (a long
        back-off is not waited for). Returns whether everything was flushed.
        """
        with self._lock:
            if self._closed:
                return not self._pending
            self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            self._idle.wait_for(lambda: not self._pending or self._nothing_due_before(deadline), timeout)
            flushed = not self._pending
        with self._lock:
            self._stopping = True
            self._idle.notify_all()
            for route in self._routes.values():
                route.wake.notify_all()
        deadline = time.monotonic() + self.config.timeout_s + 1.0  # an attempt in flight finishes and is recorded
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._ledger.close()
            self._dead_letters.close()
        return flushed

    @property
    def stats(self) -> WebhookStats:
        with self._lock:
            return WebhookStats(**self._counts, pending=len(self._pending))

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _enqueue(self, queued: QueuedDelivery, progress: Progress | None = None) -> None:
        route = self._routes[queued.url]
        self._pending.add((queued.url, queued.key))
        delivery = _Delivery(queued)
        if progress is not None:
            delivery.attempts, delivery.first_attempt_at = progress.attempts, progress.first_attempt_at
            delivery.next_attempt_at = progress.next_attempt_at
        lane = route.lanes.get(queued.stream_id)
        if lane is None:
            lane = route.lanes[queued.stream_id] = _Lane(queued.stream_id)
            lane.items.append(delivery)
            self._schedule_head(route, lane)
        else:
            lane.items.append(delivery)

    def _schedule_head(self, route: _Route, lane: _Lane) -> None:
        """Schedule the lane for its head's next attempt: now, or when a restored schedule says."""
        due_at = lane.items[0].next_attempt_at
        self._schedule(route, lane, time.monotonic() + max(0.0, (due_at or 0.0) - time.time()))

    def _schedule(self, route: _Route, lane: _Lane, due: float) -> None:
        heapq.heappush(route.ready, (due, next(self._order), lane))
        route.wake.notify()
        self._idle.notify_all()

    def _nothing_due_before(self, deadline: float | None) -> bool:
        """No attempt in flight and none due before `deadline` (monotonic). Called with the lock held."""
        return (deadline is not None and self._in_flight == 0
                and all(not route.ready or route.ready[0][0] > deadline for route in self._routes.values()))

    def _next_lane(self, route: _Route) -> _Lane | None:
        """The lane whose head is due, waiting as needed; None when stopping. Called with the lock held."""
        while not self._stopping:
            now = time.monotonic()
            if route.ready and route.ready[0][0] <= now:
                return heapq.heappop(route.ready)[2]
            route.wake.wait(route.ready[0][0] - now if route.ready else None)
        return None

    def _work(self, route: _Route) -> None:
        session = requests.Session()
        session.trust_env = self.config.trust_env
        try:
            while True:
                with self._lock:
                    lane = self._next_lane(route)
                    if lane is None:
                        return
                    self._in_flight += 1
                    delivery = lane.items[0]
                    if delivery.first_attempt_at is None:
                        delivery.first_attempt_at = time.time()
                q = delivery.queued
                result = post_alert(session, route.url, q.body, q.key, self._secret, self.config.timeout_s,
                                    self.config.signature)
                with self._lock:
                    self._in_flight -= 1
                    try:
                        self._settle(route, lane, delivery, result)
                    except Exception:
                        logger.exception("%s: recording the delivery to %s failed", q.key, redact(route.url))
                        self._schedule(route, lane, time.monotonic() + self.config.retry.max_delay_s)
        finally:
            session.close()

    def _settle(self, route: _Route, lane: _Lane, delivery: _Delivery, result: AttemptResult) -> None:
        """Record one attempt's outcome and reschedule the lane. Called with the lock held."""
        delivery.attempts += 1
        policy, q = self.config.retry, delivery.queued
        now = time.time()
        age = now - (delivery.first_attempt_at or now)
        delay = None if result.ok or not result.retryable else \
            policy.next_delay(delivery.attempts, age, self._rng, result.retry_after)
        if delay is not None:
            self._counts["retries"] += 1
            delivery.next_attempt_at = now + delay
            self._ledger.attempted(q.url, q.key, Progress(delivery.attempts, delivery.first_attempt_at or now,
                                                          delivery.next_attempt_at), result.reason)
            logger.info("%s: %s: %s, retry in %.3g s", q.key, redact(route.url), result.reason, delay)
            self._schedule(route, lane, time.monotonic() + delay)
            return
        if result.ok:
            self._ledger.settled(q.url, q.key, "delivered", delivery.attempts, result.status)
            self._counts["delivered"] += 1
        else:
            self._dead_letter(delivery, result)
        lane.items.popleft()
        self._pending.discard((q.url, q.key))
        if lane.items:
            self._schedule_head(route, lane)
        else:
            del route.lanes[lane.stream_id]
        if not self._pending:
            self._idle.notify_all()

    def _dead_letter(self, delivery: _Delivery, result: AttemptResult) -> None:
        q = delivery.queued
        self._dead_letters.append({
            "idempotency_key": q.key,
            "url": q.url,
            "stream_id": q.stream_id,
            "reason": result.reason,
            "error": result.error,
            "status": result.status,
            "attempts": delivery.attempts,
            "first_attempt_at": delivery.first_attempt_at,
            "dead_lettered_at": time.time(),
            "body": json.loads(q.body),
        })
        self._ledger.settled(q.url, q.key, "dead_lettered", delivery.attempts, result.status)
        self._counts["dead_lettered"] += 1
        logger.warning("%s: dead-lettered for %s after %d attempt(s): %s",
                       q.key, redact(q.url), delivery.attempts, result.reason)
