"""In-process bus: threads share bounded in-memory logs with the same semantics as the Redis Streams transport.

Each topic is a log of entries with, per consumer group, a read cursor and a table of pending (delivered, not yet
acknowledged) entries — the model of a Redis stream with consumer groups. One lock and condition variable guard
everything: the bus moves whole clips between a handful of worker threads, so contention is not the bottleneck.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.bus.base import (
    BackpressureTimeout,
    BusClosed,
    DeadLetter,
    Delivery,
    check_options,
    check_payload,
    dead_topic,
    overdue_reason,
)


@dataclass(slots=True)
class _Entry:
    seq: int
    payload: bytes
    key: str | None


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered_at: float
    count: int


@dataclass
class _Group:
    cursor: int
    pending: dict[int, _Pending] = field(default_factory=dict)  # insertion order == entry order


@dataclass
class _Topic:
    entries: deque[_Entry] = field(default_factory=deque)
    next_seq: int = 0
    groups: dict[str, _Group] = field(default_factory=dict)

    @property
    def head_seq(self) -> int:
        return self.entries[0].seq if self.entries else self.next_seq

    def entry(self, seq: int) -> _Entry:
        return self.entries[seq - self.head_seq]

    def backlog(self, group: _Group) -> int:
        return (self.next_seq - group.cursor) + len(group.pending)

    def worst_backlog(self) -> tuple[int, str | None]:
        """The largest group backlog and its group; every retained entry when there is no group yet."""
        if not self.groups:
            return len(self.entries), None
        name = max(self.groups, key=lambda g: self.backlog(self.groups[g]))
        return self.backlog(self.groups[name]), name

    def trim(self) -> None:
        """Drop the prefix of entries every group has acknowledged (none while there is no group)."""
        if not self.groups:
            return
        needed = min(min(next(iter(g.pending), g.cursor), g.cursor) for g in self.groups.values())
        while self.entries and self.entries[0].seq < needed:
            self.entries.popleft()


class InProcessBus:
    """Threads + bounded in-memory logs; see `pipeline.bus.base` for the contract.

    Parameters
    ----------
    max_backlog:
        Per topic, the backlog (of its slowest group) at which `publish` blocks. It bounds memory: 64 clips of
        16×112×112×3 bytes are about 40 MB.
    visibility_timeout_ms:
        An entry pending longer than this is redelivered to the next consumer of its group that asks.
    max_deliveries:
        Deliveries without acknowledgement before an entry is dead-lettered.
    publish_timeout:
        Default seconds `publish` waits for capacity; None waits forever.
    dead_letter_max_len:
        Dead letters kept per topic (oldest dropped first).
    """

    def __init__(self, *, max_backlog: int = 64, visibility_timeout_ms: int = 30_000, max_deliveries: int = 5,
                 publish_timeout: float | None = None, dead_letter_max_len: int = 10_000) -> None:
        check_options(max_backlog=max_backlog, visibility_timeout_ms=visibility_timeout_ms,
                      max_deliveries=max_deliveries, publish_timeout=publish_timeout,
                      dead_letter_max_len=dead_letter_max_len)
        self.max_backlog = max_backlog
        self.visibility_timeout_ms = visibility_timeout_ms
        self.max_deliveries = max_deliveries
        self.publish_timeout = publish_timeout
        self.dead_letter_max_len = dead_letter_max_len
        self._topics: dict[str, _Topic] = {}
        self._dead: dict[str, deque[DeadLetter]] = {}
        self._dead_seq = 0
        self._changed = threading.Condition()
        self._closed = False

    def publish(self, topic: str, payload: bytes, *, key: str | None = None, timeout: float | None = None) -> str:
        payload = check_payload(topic, payload)
        timeout = self.publish_timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            log = self._topic(topic)
            while True:
                self._check_open()
                backlog, group = log.worst_backlog()
                if backlog < self.max_backlog:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    pending = len(log.groups[group].pending) if group is not None else 0
                    who = f"group {group!r}, {pending} pending" if group else "no consumer group yet"
                    raise BackpressureTimeout(f"publish to {topic!r} timed out after {timeout:.3g}s: backlog "
                                              f"{backlog} ({who}) is at max_backlog {self.max_backlog}",
                                              group=group, backlog=backlog, pending=pending)
                self._changed.wait(remaining)
            log.entries.append(_Entry(log.next_seq, payload, key))
            log.next_seq += 1
            self._changed.notify_all()
            return str(log.next_seq - 1)

    def consume(self, topic: str, group: str, consumer: str, *, count: int = 16,
                block_ms: int = 1000) -> list[Delivery]:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        with self._changed:
            log = self._topic(topic)
            state = self._group(log, group)
            while True:
                self._check_open()
                now = time.monotonic()
                deliveries = self._take(topic, group, consumer, log, state, count, now)
                if deliveries or now >= deadline:
                    return deliveries
                self._changed.wait(min(deadline, self._next_claimable(state)) - now)

    def ack(self, topic: str, group: str, ids: Iterable[str]) -> int:
        with self._changed:
            log, state = self._existing_group(topic, group)
            if state is None:
                return 0
            acked = sum(state.pending.pop(_seq(entry_id), None) is not None for entry_id in ids)
            if acked:
                log.trim()
                self._changed.notify_all()
            return acked

    def extend(self, topic: str, group: str, consumer: str, ids: Iterable[str]) -> int:
        with self._changed:
            _, state = self._existing_group(topic, group)
            if state is None:
                return 0
            now, extended = time.monotonic(), 0
            for entry_id in ids:
                pending = state.pending.get(_seq(entry_id))
                if pending is not None:
                    pending.consumer, pending.delivered_at = consumer, now
                    extended += 1
            return extended

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._changed:
            self._check_open()
            log = self._topic(delivery.topic)
            state = self._group(log, delivery.group)
            self._bury(delivery.topic, delivery.group, delivery.id, delivery.payload, delivery.key, reason,
                       delivery.delivery_count)
            state.pending.pop(_seq(delivery.id), None)
            log.trim()
            self._changed.notify_all()

    def dead_letters(self, topic: str, *, count: int = 100) -> list[DeadLetter]:
        with self._changed:
            return list(self._dead.get(dead_topic(topic), ()))[:count]

    def ensure_group(self, topic: str, group: str) -> None:
        with self._changed:
            self._check_open()
            self._group(self._topic(topic), group)

    def lag(self, topic: str, group: str) -> int:
        with self._changed:
            log = self._topics.get(topic)
            if log is None:
                return 0
            state = log.groups.get(group)
            return len(log.entries) if state is None else log.backlog(state)

    def retained(self, topic: str) -> int:
        with self._changed:
            log = self._topics.get(topic)
            return len(log.entries) if log else 0

    def health(self) -> str | None:
        """Always None: an in-process bus cannot be unreachable or lose its data without its process."""
        return None

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __enter__(self) -> InProcessBus:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _take(self, topic: str, group: str, consumer: str, log: _Topic, state: _Group, count: int,
              now: float) -> list[Delivery]:
        """Overdue pending entries first (dead-lettering those past max_deliveries), then new ones."""
        deliveries: list[Delivery] = []
        overdue = now - self.visibility_timeout_ms / 1000
        buried = False
        for seq, pending in list(state.pending.items()):
            if len(deliveries) >= count:
                break
            if pending.delivered_at > overdue:
                continue
            entry = log.entry(seq)
            if pending.count >= self.max_deliveries:
                self._bury(topic, group, str(seq), entry.payload, entry.key,
                           overdue_reason(pending.count, self.max_deliveries), pending.count)
                del state.pending[seq]
                buried = True
                continue
            pending.consumer, pending.delivered_at, pending.count = consumer, now, pending.count + 1
            deliveries.append(Delivery(str(seq), entry.payload, topic, group, pending.count, entry.key))
        while len(deliveries) < count and state.cursor < log.next_seq:
            entry = log.entry(state.cursor)
            state.pending[entry.seq] = _Pending(consumer, now, 1)
            deliveries.append(Delivery(str(entry.seq), entry.payload, topic, group, 1, entry.key))
            state.cursor += 1
        if buried:
            log.trim()
            self._changed.notify_all()
        return deliveries

    def _next_claimable(self, state: _Group) -> float:
        """When the oldest pending entry of `state` becomes redeliverable (infinity if none is pending)."""
        oldest = min((p.delivered_at for p in state.pending.values()), default=float("inf"))
        return oldest + self.visibility_timeout_ms / 1000

    def _bury(self, topic: str, group: str, entry_id: str, payload: bytes, key: str | None, reason: str,
              deliveries: int) -> None:
        letters = self._dead.setdefault(dead_topic(topic), deque(maxlen=self.dead_letter_max_len))
        self._dead_seq += 1
        letters.append(DeadLetter(str(self._dead_seq), topic, group, entry_id, payload, key, reason,
                                  deliveries, time.time()))

    def _topic(self, topic: str) -> _Topic:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}")
        return self._topics.setdefault(topic, _Topic())

    def _group(self, log: _Topic, group: str) -> _Group:
        state = log.groups.get(group)
        if state is None:
            state = log.groups[group] = _Group(cursor=log.head_seq)
        return state

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed("bus is closed")

    def _existing_group(self, topic: str, group: str):
        """(topic log, group state) of a group that exists, else (log or None, None); the caller holds the lock."""
        self._check_open()
        log = self._topics.get(topic)
        return log, log.groups.get(group) if log else None


def _seq(entry_id: str) -> int:
    try:
        return int(entry_id)
    except (TypeError, ValueError):
        raise ValueError(f"not an entry id of this bus: {entry_id!r}") from None
