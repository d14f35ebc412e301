"""The decoder worker: every configured source in its own thread (a directory's files one after another), each
stream's clips published on the bus, each stream's health events beside them.

The work on one file or stream is `pipeline.stream.steps.decode`; this module adds the threads, back-pressure
(a slow pipeline slows file reading; live readers drop their oldest frames rather than fall behind), shutdown and
health: events go to the bus from a queue, so a reader thread never waits on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from pipeline.bus import BackpressureTimeout, Bus, BusClosed, BusError
from pipeline.config import PipelineConfig, SourceConfig
from pipeline.detect import Detector
from pipeline.models import Preprocessing
from pipeline.stream.messages import ClipMessage, HealthMessage, MessageError, encode
from pipeline.stream.steps.decode import (
    StreamPlan,
    clip_message,
    file_clip_messages,
    live_seq_start,
    plan_streams,
    splitter_for,
)
from pipeline.stream.topology import stage
from pipeline.video import StreamEvent, VideoError, open_source, open_video
from pipeline.video.errors import describe_source, error_reason
from pipeline.video.preprocess import MIN_FRAME_SIDE
from workers.loop import publish_until
from workers.ops import HealthBoard, PipelineMetrics

logger = logging.getLogger(__name__)

CLIPS_TOPIC = stage("decoder").output_topic
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


@dataclass
class DecoderReport:
    """What a decoder run did: clips published per stream, inputs skipped (with the reason), bus failures."""

    published: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.published.values())


class DecoderWorker:
    """Decodes every configured source in its own thread (a directory's files one after another)."""

    name = "decoder"

    def __init__(self, config: PipelineConfig, bus: Bus, *, stop: threading.Event, metrics: PipelineMetrics,
                 board: HealthBoard | None = None, preprocessing: Preprocessing | None = None):
        self.config = config
        self.bus = bus
        self.stop = stop
        self.metrics = metrics
        self.stage_metrics = metrics.stage(self.name)
        self.board = board
        prep = preprocessing or Detector.preprocessing(config.bundle)
        self.preprocessing = prep
        self.short_side = prep.short_side if config.decoder.resize == "model" else None
        self.report = DecoderReport()
        self._lock = threading.Lock()
        self._live: list = []
        self.health = HealthPublisher(bus, metrics, board=board)

    def splitter(self, source: SourceConfig):
        return splitter_for(self.preprocessing, source.stride)

    def run(self) -> DecoderReport:
        """Decode until every source has ended (files) or `stop` is set (live sources run until then)."""
        if self.board is not None:
            self.board.beat(self.name)
        threads = [threading.Thread(target=self._run_source, args=(source,), name=f"decoder-{index}", daemon=True)
                   for index, source in enumerate(self.config.sources)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            if self.stop.wait(0.2):
                with self._lock:
                    for reader in self._live:
                        reader.close(timeout=0)
                for thread in threads:
                    thread.join(15.0)
                break
            if self.board is not None:
                self.board.beat(self.name)
        self.health.close()
        if self.board is not None:
            self.board.finished(self.name)
        logger.info("decoder: published %d clips from %d streams, skipped %d inputs", self.report.total,
                    len(self.report.published), len(self.report.skipped))
        return self.report

    def _run_source(self, source: SourceConfig) -> None:
        plans, bad = plan_streams(source)
        for item in bad:
            self._skip(str(item))
        offsets: dict[str, int] = {}
        try:
            while plans and not self.stop.is_set():
                for plan in list(plans):
                    if self.stop.is_set():
                        return
                    if not plan.is_file:
                        self._run_live(plan)
                    elif (offset := self._run_file(plan, offsets.get(plan.stream_id))) is None:
                        plans.remove(plan)  # unusable: skipped once, not at every loop
                    else:
                        offsets[plan.stream_id] = offset
                if not source.loop:
                    return
        except BusClosed:
            if not self.stop.is_set():
                raise
            logger.warning("decoder: source %s stopped with the bus closed on shutdown",
                           plans[0].stream_id if plans else source.path)
        except BusError as error:
            logger.error("decoder: source %s stopped: %s", plans[0].stream_id if plans else source.path, error)
            self.report.failed.append(str(error))
            if self.board is not None:
                self.board.failed(self.name, str(error))

    def _run_file(self, plan: StreamPlan, seq_offset: int | None) -> int | None:
        """Publish a file's clips; returns the seq offset its next loop should use, None if the file is unusable."""
        if seq_offset is None:
            seq_offset = live_seq_start() if plan.source.loop else 0
        count = 0
        try:
            with open_video(plan.target, access="sequential", min_side=MIN_FRAME_SIDE) as reader:
                self.health.emit(plan.stream_id, "up", f"{reader.num_frames} frames")
                for message in file_clip_messages(reader, self.splitter(plan.source), plan.stream_id,
                                                  short_side=self.short_side, seq_offset=seq_offset,
                                                  pace=plan.source.pace, stop=self.stop):
                    if not self._publish(message):
                        break
                    count += 1
        except VideoError as error:
            reason, line = error.reason, str(error)
        except MessageError as error:
            reason = line = str(error)
        except (OSError, RuntimeError) as error:
            reason = error_reason(error)
            line = f"{plan.target}: unreadable after {count} clips ({reason})"
        else:
            self.health.emit(plan.stream_id, "ended", f"end of file, {count} clips")
            if count == 0 and plan.source.loop:
                self._skip(f"{plan.target}: shorter than one clip, cannot loop it")
                return None
            return seq_offset + count
        self.health.emit(plan.stream_id, "down", reason)
        self._skip(line)
        return None

    def _run_live(self, plan: StreamPlan) -> None:
        source = plan.source
        try:
            reader = open_source(plan.target, stream_id=plan.stream_id, on_event=self.health,
                                 open_timeout=source.open_timeout_s, stall_timeout=source.stall_timeout_s,
                                 max_reconnects=source.max_reconnects, backoff_initial=source.backoff_initial_s,
                                 backoff_max=source.backoff_max_s, options=dict(source.options) or None)
        except VideoError as error:
            if self.board is not None:
                self.board.set(f"camera {plan.stream_id}", f"down {error.reason}")
            self._skip(str(error))
            return
        with self._lock:
            self._live.append(reader)
        try:
            if self.stop.is_set():  # stopped while connecting: `run` may have closed the readers before this one
                return
            for clip in self.splitter(source).clips(reader, plan.stream_id, first_seq=live_seq_start()):
                if self.stop.is_set() or not self._publish(clip_message(clip, short_side=self.short_side,
                                                                        source=describe_source(plan.target))):
                    break
        except MessageError as error:
            self._skip(str(error))
        finally:
            reader.close()

    def _publish(self, message: ClipMessage) -> bool:
        message = message.with_timestamp("decoder")
        published = publish_until(self.bus, CLIPS_TOPIC, encode(message, max_bytes=self.config.bus.max_bytes),
                                  key=message.key, stop=self.stop,
                                  blocked=self.stage_metrics.backpressure_seconds,
                                  stalls=self.stage_metrics.publish_stalls)
        if published:
            self.stage_metrics.messages_out.inc()
            self.metrics.clips.labels(message.stream_id).inc()
            with self._lock:
                self.report.published[message.stream_id] = self.report.published.get(message.stream_id, 0) + 1
        return published

    def _skip(self, line: str) -> None:
        logger.error("decoder: skipping %s", line)
        self.metrics.source_errors.inc()
        with self._lock:
            self.report.skipped.append(line)
