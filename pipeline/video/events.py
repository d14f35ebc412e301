"""What frame sources produce: frames with timestamps, and health events about the stream they come from."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame of a source.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        index: position in everything the source has delivered or dropped, from 0; it never goes back, so a gap
            means frames were dropped.
        pts: presentation time in seconds on the source's clock (files: 0 at the first frame; live streams: the
            stream's own timestamps, which restart when the stream does; NaN if the source has none).
        wall_time: `time.time()` when the frame was decoded.
        segment: connection number, from 0; it grows at every reconnect, so frames of different segments are not
            contiguous in time.
    """

    image: np.ndarray
    index: int
    pts: float
    wall_time: float
    segment: int = 0


class Health(str, Enum):  # noqa: UP042 (StrEnum would change how states format in logs)
    """Stream health states; each transition is published as a StreamEvent."""

    UP = "up"
    DOWN = "down"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


@dataclass(frozen=True)
class StreamEvent:
    """A change in a stream's health. `detail` is a one-line reason; `attempt` and `delay` describe reconnects."""

    stream_id: str
    health: Health
    time: float = field(default_factory=time.time)
    detail: str = ""
    attempt: int = 0
    delay: float = 0.0

    def __str__(self) -> str:
        extra = f" (attempt {self.attempt}, in {self.delay:.2f} s)" if self.health is Health.RECONNECTING else ""
        reason = f": {self.detail}" if self.detail else ""
        return f"{self.stream_id} {self.health.value}{extra}{reason}"


EventCallback = Callable[[StreamEvent], None]


class HealthReporter:
    """Records a source's health, keeps recent events, and passes each to an optional callback.

    The callback runs on the thread that detects the change (a live reader's background thread), so it should be
    quick: hand the event to a queue or a bus. An exception in it is logged, never propagated into the reader.
    """

    def __init__(self, stream_id: str, on_event: EventCallback | None = None, history: int = 1000):
        self.stream_id = stream_id
        self._on_event = on_event
        self._events: deque[StreamEvent] = deque(maxlen=history)
        self._lock = threading.Lock()
        self.health: Health | None = None

    def emit(self, health: Health, detail: str = "", attempt: int = 0, delay: float = 0.0) -> StreamEvent:
        event = StreamEvent(self.stream_id, health, detail=detail, attempt=attempt, delay=delay)
        with self._lock:
            self.health = health
            self._events.append(event)
        logger.info("stream %s", event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("stream %s: event callback failed", self.stream_id)
        return event

    @property
    def events(self) -> list[StreamEvent]:
        """The most recent events, oldest first."""
        with self._lock:
            return list(self._events)
