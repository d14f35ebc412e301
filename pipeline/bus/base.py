"""The bus contract shared by both transports (in-process and Redis Streams).

A *topic* is an append-only log of entries (payload bytes plus an optional key, usually the clip key). Consumers read
a topic through a named *group*:

- every group sees every entry; within a group each entry is handed to one consumer at a time;
- a delivered entry stays *pending* until the group acknowledges it (at-least-once). One not acknowledged within
  `visibility_timeout_ms` (the consumer crashed or hangs) is handed again, to whichever consumer of the group calls
  `consume` next, with `delivery_count` + 1; past `max_deliveries` deliveries it is moved to the dead-letter topic
  ``<topic>:dead`` with a reason, and acknowledged;
- a worker's loop is ``consume → step → publish result → ack``: acknowledging only after the result is published
  means a crash can duplicate a result downstream but never lose one, so every stage is idempotent on the key;
- entries come out in publish order; redeliveries come out of order;
- a group is created on its first `consume` (or `ensure_group`) at the oldest retained entry, so nothing published
  before its consumers started is missed. Producers may call `ensure_group` for the groups they feed;
- back-pressure instead of loss: `publish` blocks while the topic's *backlog* (for the slowest group: entries not yet
  delivered plus entries delivered but not acknowledged; with no group yet, every retained entry) is at
  `max_backlog`, and raises `BackpressureTimeout` after its timeout. Only entries acknowledged by every group are
  ever trimmed: nothing is dropped silently.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipeline.errors import ClipwatchError

__all__ = [
    "BackpressureTimeout",
    "Backoff",
    "Bus",
    "BusClosed",
    "BusError",
    "BusRefused",
    "BusUnavailable",
    "DeadLetter",
    "Delivery",
    "dead_topic",
]

DEAD_SUFFIX = ":dead"


def dead_topic(topic: str) -> str:
    """Name of `topic`'s dead-letter topic."""
    return topic + DEAD_SUFFIX


class BusError(ClipwatchError, RuntimeError):
    """Base of bus failures (not raised for bad payloads: those are `MessageError`)."""


class BusClosed(BusError):
    """The bus was closed; raised by calls made after `close()` and by calls blocked in it at the time."""


class BackpressureTimeout(BusError, TimeoutError):
    """`publish` waited its whole timeout for the downstream backlog to drop below `max_backlog`.

    `group` is the slowest group (None: no group yet), `backlog` its backlog and `pending` how many of those
    entries its consumers hold; a full backlog with nothing pending means nobody is reading.
    """

    def __init__(self, message: str, *, group: str | None = None, backlog: int = 0, pending: int = 0):
        super().__init__(message)
        self.group, self.backlog, self.pending = group, backlog, pending


class BusUnavailable(BusError, ConnectionError):
    """The broker stayed unreachable for longer than the reconnect timeout."""


class BusRefused(BusError):
    """The broker refused this client (wrong password, missing ACL permission): retrying cannot help."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry handed to a consumer.

    Attributes:
        id: entry id within the topic (pass it to `ack`).
        payload: the published bytes.
        topic, group: where it came from, so `dead_letter` needs nothing else.
        delivery_count: 1 on first delivery, more on redeliveries.
        key: the key given to `publish` (the clip key), or None.
    """

    id: str
    payload: bytes
    topic: str
    group: str
    delivery_count: int = 1
    key: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry moved to ``<topic>:dead``: the original payload and why it was given up on."""

    id: str
    topic: str
    group: str
    entry_id: str
    payload: bytes
    key: str | None
    reason: str
    delivery_count: int
    time: float


@runtime_checkable
class Bus(Protocol):
    """What workers need from a transport; see the module docstring for the delivery semantics."""

    def publish(self, topic: str, payload: bytes, *, key: str | None = None, timeout: float | None = None) -> str:
        """Append `payload`, blocking while the topic's backlog is at `max_backlog`; returns the entry id.

        `timeout` (seconds) bounds the wait; None uses the bus's `publish_timeout` (None there: wait forever).
        """
        ...

    def consume(self, topic: str, group: str, consumer: str, *, count: int = 16,
                block_ms: int = 1000) -> list[Delivery]:
        """Up to `count` entries for `consumer` of `group`: overdue redeliveries first, then new entries.

        Waits up to `block_ms` when there is nothing; returns [] then.
        """
        ...

    def ack(self, topic: str, group: str, ids: Iterable[str]) -> int:
        """Acknowledge entries (after their results are published); returns how many were still pending."""
        ...

    def extend(self, topic: str, group: str, consumer: str, ids: Iterable[str]) -> int:
        """Restart the visibility timeout of entries `consumer` holds on purpose (the sink's reorder buffer holds
        verdicts until their stream's gap fills); returns how many were still pending. No delivery count is added.
        """
        ...

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery to ``<topic>:dead`` with a one-line reason and acknowledge it (e.g. a malformed payload)."""
        ...

    def dead_letters(self, topic: str, *, count: int = 100) -> list[DeadLetter]:
        """The oldest `count` dead letters of `topic`."""
        ...

    def ensure_group(self, topic: str, group: str) -> None:
        """Create `group` on `topic` (idempotent), starting at the oldest retained entry."""
        ...

    def lag(self, topic: str, group: str) -> int:
        """Entries `group` has not acknowledged yet: undelivered plus pending (all retained ones if no group)."""
        ...

    def retained(self, topic: str) -> int:
        """Entries `topic` still holds: unacknowledged ones plus acknowledged ones not trimmed yet."""
        ...

    def health(self) -> str | None:
        """None while the transport works; else one line saying what is wrong (reconnecting, data lost)."""
        ...

    def close(self) -> None:
        """Release resources and wake blocked calls, reconnect waits included (they raise `BusClosed`)."""
        ...


class Backoff:
    """Exponential back-off with full jitter: waits grow from `initial` by `factor` up to `maximum` seconds."""

    def __init__(self, initial: float = 0.01, maximum: float = 1.0, factor: float = 2.0) -> None:
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def sleep(self, deadline: float | None = None, wake: threading.Event | None = None) -> None:
        """Sleep the next delay, never past `deadline` (a `time.monotonic()` value); `wake` being set ends it."""
        delay = self.next_delay()
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        if wake is not None:
            wake.wait(delay)
        else:
            time.sleep(delay)

    def reset(self) -> None:
        self.attempt = 0


def check_options(*, max_backlog: int, visibility_timeout_ms: int, max_deliveries: int,
                  publish_timeout: float | None, dead_letter_max_len: int) -> None:
    """Validate the options both transports share; ValueError names the bad one."""
    if max_backlog < 1:
        raise ValueError(f"max_backlog must be >= 1, got {max_backlog}")
    if visibility_timeout_ms < 1:
        raise ValueError(f"visibility_timeout_ms must be >= 1, got {visibility_timeout_ms}")
    if max_deliveries < 1:
        raise ValueError(f"max_deliveries must be >= 1, got {max_deliveries}")
    if publish_timeout is not None and publish_timeout < 0:
        raise ValueError(f"publish_timeout must be >= 0 or None, got {publish_timeout}")
    if dead_letter_max_len < 1:
        raise ValueError(f"dead_letter_max_len must be >= 1, got {dead_letter_max_len}")


def check_payload(topic: str, payload: object) -> bytes:
    """`payload` as bytes; TypeError for anything else (the bus moves bytes, not objects)."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if not isinstance(payload, bytes):
        raise TypeError(f"publish to {topic!r}: payload must be bytes (use messages.encode), "
                        f"got {type(payload).__name__}")
    return payload


def overdue_reason(deliveries: int, max_deliveries: int) -> str:
    """The dead-letter reason for an entry never acknowledged in `deliveries` deliveries."""
    return f"not acknowledged after {deliveries} deliveries (max_deliveries={max_deliveries})"
