"""Stream health events → `HealthMessage`s on the bus, from a queue of their own: a decoder's reader thread never
waits on the bus to say that its camera went down."""

from __future__ import annotations

import logging
import queue
import threading

from pipeline.bus import BackpressureTimeout, Bus, BusError
from pipeline.stream.messages import HealthMessage, encode
from pipeline.stream.topology import stage
from pipeline.video import StreamEvent
from workers.ops import HealthBoard, PipelineMetrics

__all__ = ["HEALTH_TOPIC", "HealthPublisher"]

logger = logging.getLogger(__name__)

HEALTH_TOPIC = stage("health").input_topic


class HealthPublisher:
    """Stream health events → `HealthMessage`s on the bus, through a queue (reader threads never block)."""

    def __init__(self, bus: Bus, metrics: PipelineMetrics, publish_timeout_s: float = 5.0,
                 board: HealthBoard | None = None):
        self.bus = bus
        self.metrics = metrics
        self.board = board
        self.publish_timeout_s = publish_timeout_s
        self._queue: queue.Queue[HealthMessage | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="decoder-health", daemon=True)
        self._thread.start()

    def __call__(self, event: StreamEvent) -> None:
        """A live stream's event; it also sets the camera's component on the health board (down = degraded)."""
        state = event.health.value
        if self.board is not None:
            self.board.set(f"camera {event.stream_id}", None if state in ("up", "ended") else
                           f"{state} {event.detail}".strip())
        self.emit(event.stream_id, state, event.detail)

    def emit(self, stream_id: str, state: str, detail: str = "") -> None:
        self.metrics.stream_up.labels(stream_id).set(1 if state == "up" else 0)
        self._queue.put(HealthMessage(stream_id=stream_id, state=state, detail=detail))

    def removed(self, stream_id: str) -> None:
        """Stream `stream_id` was removed from the sources: ``ended`` / ``removed``, and off the health board."""
        if self.board is not None:
            self.board.forget(f"camera {stream_id}")
        self.emit(stream_id, "ended", "removed")

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is queued (up to `timeout`), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self.bus.publish(HEALTH_TOPIC, encode(message), key=message.stream_id, timeout=self.publish_timeout_s)
            except BackpressureTimeout:
                logger.warning("decoder: health event %s %s not published: nobody consumes %r",
                               message.stream_id, message.state, HEALTH_TOPIC)
            except BusError as error:
                logger.warning("decoder: health event %s %s not published: %s", message.stream_id, message.state,
                               error)
