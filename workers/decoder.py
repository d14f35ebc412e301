"""Decoder stage: every source (files, directories, stream URLs, webcams) → clips → `ClipMessage`s on "clips".

Clip geometry comes from the bundle's model (clip length, frame step; stride per source). With
``decoder.resize: model`` (the default) frames are resized so their shorter side is the model's ``short_side``
before publishing, with the very operation `pipeline.video.preprocess` applies (bilinear on uint8, no
antialiasing): the classifier then skips its own resize and sees bit-identical pixels, while a 1080p clip
shrinks ~70× on the bus. Frames smaller than that are sent as they are.

Clip keys: files start at seq 0, so decoding a file again yields the same keys and everything downstream
recognises them as already done. Live sources and looped files start at the current time in milliseconds, so
keys stay unique across decoder restarts (seq keeps counting up within a run).

Health: each stream's events (up, down, stalled, reconnecting, ended) go to the "health" topic from a queue, so a
reader thread never waits on the bus. Clips are published with back-pressure: a slow pipeline slows file reading,
and live readers drop their oldest frames rather than fall behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.bus import BackpressureTimeout, Bus, BusClosed, BusError, ClipMessage, HealthMessage, MessageError, encode
from pipeline.config import PipelineConfig, SourceConfig
from pipeline.detect import DetectorBundle
from pipeline.models import Preprocessing
from pipeline.models.manifest import MANIFEST_FILE, read_manifest
from pipeline.video import (
    BadVideo,
    Clip,
    ClipSplitter,
    StreamEvent,
    VideoError,
    VideoReader,
    iter_file_clips,
    open_source,
    open_video,
)
from pipeline.video.errors import describe_source, error_reason
from pipeline.video.preprocess import MIN_FRAME_SIDE, resize_frames
from pipeline.video.scan import find_video_files
from workers.ops import HealthBoard, PipelineMetrics
from workers.runtime import publish_until

logger = logging.getLogger(__name__)

CLIPS_TOPIC = "clips"
HEALTH_TOPIC = "health"


def model_preprocessing(bundle_dir: str | Path) -> Preprocessing:
    """The preprocessing of the bundle's model (after checking the model's SHA-256), without loading weights."""
    bundle = DetectorBundle.load(bundle_dir)
    return read_manifest(bundle.resolve_model(bundle_dir) / MANIFEST_FILE).preprocessing


def shrink_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames with the shorter side scaled down to `short_side`, as `preprocess` would do it.

    Frames no larger than that are returned as they are; ValueError if the resized clip would be too large.
    """
    if min(frames.shape[1:3]) <= short_side:
        return frames
    return resize_frames(frames, short_side).numpy()


def clip_message(clip: Clip, *, short_side: int | None = None, source: str | None = None,
                 seq_offset: int = 0) -> ClipMessage:
    """The message of one clip, frames resized to `short_side` if given, sequence number moved by `seq_offset`."""
    try:
        frames = clip.frames if short_side is None else shrink_frames(clip.frames, short_side)
    except ValueError as error:
        raise MessageError(f"clip {clip.stream_id}:{clip.seq + seq_offset}: {error}") from None
    return ClipMessage.from_array(frames, stream_id=clip.stream_id, seq=clip.seq + seq_offset,
                                  first_frame=clip.first_frame, last_frame=clip.last_frame, pts=clip.pts,
                                  source=source)


def file_clip_messages(path: str | Path | VideoReader, splitter: ClipSplitter, stream_id: str, *, short_side: int | None = None,
                       seq_offset: int = 0, pace: float | None = None,
                       stop: threading.Event | None = None) -> Iterator[ClipMessage]:
    """The clip messages of one video file (a path, or an open reader left open), in order.

    VideoError (one line) if the file cannot be used.
    With `pace`, each clip is released when its last frame would have been shown playing the file at `pace` times
    real time (a recorded camera replayed live).
    """
    started = time.monotonic()
    name = str(path.path if isinstance(path, VideoReader) else path)
    for clip in iter_file_clips(path, splitter, stream_id):
        if stop is not None and stop.is_set():
            return
        if pace is not None and np.isfinite(clip.pts[-1]):
            delay = started + float(clip.pts[-1]) / pace - time.monotonic()
            if delay > 0 and stop is not None and stop.wait(delay):
                return
            if delay > 0 and stop is None:
                time.sleep(delay)
        yield clip_message(clip, short_side=short_side, source=name, seq_offset=seq_offset)


@dataclass(frozen=True)
class StreamPlan:
    """One stream to decode: a file (`is_file`) or a live target (URI or camera index)."""

    stream_id: str
    target: str | int
    source: SourceConfig
    is_file: bool


def plan_streams(source: SourceConfig) -> tuple[list[StreamPlan], list[BadVideo]]:
    """The streams of a source: one per video file of a directory (each validated when its turn comes).

    Stream ids are `SourceConfig.stream_id`; a directory's files get ``<that>/<path inside it>``, without the
    suffix unless two files differ only by it (``cam.mp4`` and ``cam.avi`` become ``.../cam.mp4`` and
    ``.../cam.avi``), so every file keeps its own clip keys. A path that does not exist is returned as a
    `BadVideo`, not raised, so the other sources keep running.
    """
    if source.webcam is not None or source.uri is not None:
        return [StreamPlan(source.stream_id, source.webcam if source.uri is None else source.uri, source, False)], []
    path = source.path
    if path.is_file():
        return [StreamPlan(source.stream_id, str(path), source, True)], []
    if not path.is_dir():
        return [], [BadVideo(str(path), "no such file or directory")]
    videos = find_video_files(path, recursive=source.recursive)
    names = directory_stream_names([video.relative_to(path) for video in videos])
    return [StreamPlan(f"{source.stream_id}/{name}", str(video), source, True)
            for video, name in zip(videos, names, strict=True)], []


def directory_stream_names(relative: list[Path]) -> list[str]:
    """Unique stream names of a directory's files: the path without its suffix, with it where that is ambiguous."""
    names = [path.with_suffix("").as_posix() for path in relative]
    while True:
        clashing = {name for name, count in Counter(names).items() if count > 1}
        if not clashing:
            return names
        names = [path.as_posix() if name in clashing else name for name, path in zip(names, relative, strict=True)]


def live_seq_start() -> int:
    """First seq of a live stream: the time in ms, so keys never repeat across restarts (< 1000 clips/s)."""
    return int(time.time() * 1000)


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
        prep = preprocessing or model_preprocessing(config.bundle)
        self.preprocessing = prep
        self.short_side = prep.short_side if config.decoder.resize == "model" else None
        self.report = DecoderReport()
        self._lock = threading.Lock()
        self._live: list = []
        self.health = HealthPublisher(bus, metrics, board=board)

    def splitter(self, source: SourceConfig) -> ClipSplitter:
        prep = self.preprocessing
        return ClipSplitter(prep.clip_len, source.stride or prep.clip_len, prep.frame_step)

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
