"""The console's live events: what the store changed, fanned out to every Server-Sent Events client.

Each event gets an id ``<hub epoch>-<n>``, n increasing, and the last `backlog` events are kept, so a client that
reconnects with ``Last-Event-ID`` receives what it missed; one that fell further behind, or whose id is from
another server start, gets a ``reset`` event (refetch everything). A subscriber's queue is bounded: a client too slow to keep up is dropped (its browser reconnects),
so no client can make the publisher wait or hold unbounded memory.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "EventHub", "Subscription"]


@dataclass(frozen=True)
class Event:
    """One change: `kind` is ``alert``, ``review``, ``camera`` or ``reset``; `data` its JSON object."""

    id: int
    kind: str
    data: dict[str, Any]
    epoch: str = ""

    def encode(self) -> bytes:
        """The event in the ``text/event-stream`` format."""
        payload = json.dumps(self.data, separators=(",", ":"), allow_nan=False)
        return f"id: {self.epoch}-{self.id}\nevent: {self.kind}\ndata: {payload}\n\n".encode()


class Subscription:
    """One client's queue of events; `dropped` is set when it fell behind and was cut off."""

    def __init__(self, hub: EventHub, size: int):
        self._hub = hub
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=size)
        self.dropped = False

    def get(self, timeout: float) -> Event | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._hub._unsubscribe(self)


class EventHub:
    """Publishes events to subscribers; thread-safe, never blocks the publisher."""

    def __init__(self, backlog: int = 512, queue_size: int = 256, max_subscribers: int = 32):
        self.max_subscribers = max_subscribers
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._backlog: deque[Event] = deque(maxlen=backlog)
        self._subscribers: list[Subscription] = []
        self._next_id = 1
        self.epoch = secrets.token_hex(4)

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        with self._lock:
            event = Event(self._next_id, kind, data, self.epoch)
            self._next_id += 1
            self._backlog.append(event)
            for subscription in list(self._subscribers):
                try:
                    subscription._queue.put_nowait(event)
                except queue.Full:
                    subscription.dropped = True
                    self._subscribers.remove(subscription)
        return event

    def subscribe(self, last_event_id: str | None = None) -> Subscription | None:
        """A new subscription (None when `max_subscribers` are connected). A client resuming after
        `last_event_id` first gets the events it missed, or one ``reset`` event when they are not all here."""
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                return None
            subscription = Subscription(self, self._queue_size)
            if last_event_id:
                epoch, _, number = last_event_id.partition("-")
                last = int(number) if epoch == self.epoch and number.isdigit() else -1
                missed = [event for event in self._backlog if event.id > last]
                if last < 0 or last >= self._next_id or (missed and missed[0].id != last + 1) \
                        or len(missed) > self._queue_size:  # more than the queue holds: start over, not a gap
                    missed = [Event(self._next_id - 1, "reset", {"reason": "missed events"}, self.epoch)]
                for event in missed:
                    subscription._queue.put_nowait(event)
            self._subscribers.append(subscription)
            return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)
