"""The decoder worker: every configured source in its own thread (a directory's files one after another), each
stream's clips published on the bus, each stream's health events beside them.

The work on one file or stream is `pipeline.stream.steps.decode`; this module adds the threads, back-pressure
(a slow pipeline slows file reading; live readers drop their oldest frames rather than fall behind), shutdown and
health: events go to the bus from a queue, so a reader thread never waits on it.

Sources change while it runs: `reload` (SIGHUP) re-reads the config file's ``sources``, and `add` / `remove` (the
console's ``POST`` / ``DELETE /api/cameras``) change one. New sources start, removed ones stop after publishing the
clip in hand (what is on the bus is scored as usual) and say so with a health event (``ended``, detail
``removed``), unchanged ones are left alone.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count

from pipeline.bus import Bus, BusClosed, BusError
from pipeline.config import ConfigError, PipelineConfig, SourceConfig, check_stream_ids, reload_sources
from pipeline.detect import Detector
from pipeline.errors import ClipwatchError
from pipeline.models import Preprocessing
from pipeline.stream.messages import ClipMessage, MessageError, encode
from pipeline.stream.steps.decode import (
    StreamPlan,
    clip_message,
    file_clip_messages,
    live_seq_start,
    plan_streams,
    splitter_for,
)
from pipeline.stream.topology import stage
from pipeline.video import VideoError, open_source, open_video
from pipeline.video.errors import describe_source, error_reason
from pipeline.video.preprocess import MIN_FRAME_SIDE
from workers.loop import publish_until
from workers.ops import HealthBoard, PipelineMetrics
from workers.stream_health import HealthPublisher

logger = logging.getLogger(__name__)

CLIPS_TOPIC = stage("decoder").output_topic


@dataclass
class DecoderReport:
    """What a decoder run did: clips published per stream, inputs skipped (with the reason), bus failures."""

    published: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.published.values())


@dataclass(eq=False)
class _Feed:
    """One source and its thread: `halt` stops this source alone; `origin` is "config" (the file) or "api"."""

    source: SourceConfig
    origin: str
    halt: threading.Event = field(default_factory=threading.Event)
    readers: list = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None
    removed: bool = False
    done: bool = False

    @property
    def name(self) -> str:
        return self.source.stream_id or describe_source(self.source.path)


class DecoderWorker:
    """Decodes every configured source in its own thread (a directory's files one after another); sources can be
    added and removed while it runs (`reload`, `add`, `remove`)."""

    name = "decoder"

    def __init__(self, config: PipelineConfig, bus: Bus, *, stop: threading.Event, metrics: PipelineMetrics,
                 board: HealthBoard | None = None, preprocessing: Preprocessing | None = None,
                 reload: threading.Event | None = None):
        self.config = config
        self.bus = bus
        self.stop = stop
        self.reload_requested = reload if reload is not None else threading.Event()
        self.metrics = metrics
        self.stage_metrics = metrics.stage(self.name)
        self.board = board
        prep = preprocessing or Detector.preprocessing(config.bundle)
        self.preprocessing = prep
        self.short_side = prep.short_side if config.decoder.resize == "model" else None
        self.report = DecoderReport()
        self._lock = threading.Lock()
        self._feeds: list[_Feed] = []
        self._stopping: list[_Feed] = []
        self._pending: list[SourceConfig] = []  # changed sources waiting for their old thread to end
        self._numbers = count()
        self._closed = False
        self.health = HealthPublisher(bus, metrics, board=board)

    def splitter(self, source: SourceConfig):
        return splitter_for(self.preprocessing, source.stride)

    def run(self) -> DecoderReport:
        """Decode until every source has ended by itself (files) or `stop` is set (live sources run until then).

        While it runs, `reload_requested` (SIGHUP) makes it `reload` its sources; with every source removed it
        waits for new ones.
        """
        if self.board is not None:
            self.board.beat(self.name)
        with self._lock:
            for source in self.config.sources:
                self._start(source, "config")
        while not self.stop.wait(0.2):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            if self.board is not None:
                self.board.beat(self.name)
            with self._lock:
                self._stopping = [feed for feed in self._stopping if feed.thread.is_alive()]
                for source in [s for s in self._pending if s.stream_id not in self._stopping_ids()]:
                    self._pending.remove(source)
                    self._start(source, "config")
                if self._feeds and not self._pending and not any(feed.thread.is_alive() for feed in self._feeds):
                    self._closed = True
                    break
        with self._lock:
            self._closed = True
            feeds = self._feeds + self._stopping
            for feed in feeds:
                feed.halt.set()
                for reader in feed.readers:
                    reader.close(timeout=0)
        for feed in feeds:
            feed.thread.join(15.0)
        self.health.close()
        if self.board is not None:
            self.board.finished(self.name)
        logger.info("decoder: published %d clips from %d streams, skipped %d inputs", self.report.total,
                    len(self.report.published), len(self.report.skipped))
        return self.report

    def reload(self) -> bool:
        """Run the config file's ``sources`` as it reads now (cameras added through the API are kept); a file that
        does not validate, or whose ids clash with a running camera, is refused with one log line and nothing
        changes. Returns whether it was applied."""
        try:
            sources, changed = reload_sources(self.config)
            added, removed = self.apply(sources)
        except ClipwatchError as error:
            logger.error("decoder: reload refused, running sources kept: %s", error)
            return False
        logger.info("decoder: sources reloaded from %s: %d added, %d removed, %d unchanged", self.config.source_file,
                    added, removed, len(sources) - added)
        if changed:
            logger.warning("decoder: a reload applies only `sources`; restart for the changes to %s",
                           ", ".join(changed))
        return True

    def apply(self, sources: list[SourceConfig]) -> tuple[int, int]:
        """Make `sources` the running configured sources: start new ones, remove the ones not in it (by equality:
        a changed source is removed and started again). Returns (added, removed); ClipwatchError if refused."""
        with self._lock:
            if self._closed:
                raise ClipwatchError("the decoder has stopped")
            if self._pending:
                raise ConfigError(f"{self.config.source_file}: sources: a changed source is still restarting "
                                  f"({', '.join(str(s.stream_id) for s in self._pending)}); try again in a moment")
            configured = [feed for feed in self._feeds if feed.origin == "config"]
            adopted = [feed for feed in self._feeds if feed.origin == "api" and feed.source in sources]
            api = [feed.source for feed in self._feeds if feed.origin == "api" and feed not in adopted]
            wanted = {source.stream_id for source in sources}
            for source in api:
                if source.stream_id in wanted:
                    raise ConfigError(f"{self.config.source_file}: sources: {source.stream_id!r} is a camera added "
                                      "through the API with other settings; remove it there first")
            self._check_ids([*sources, *api], f"{self.config.source_file}: sources (with the cameras added through "
                                              "the API)")
            removed = [feed for feed in configured if feed.source not in sources]
            running = [feed.source for feed in configured + adopted if feed not in removed]
            added = [source for source in sources if source not in running]
            for feed in adopted:
                feed.origin = "config"
            for feed in removed:
                self._remove(feed)
            stopping = self._stopping_ids()
            for source in added:
                if source.stream_id in stopping:  # a changed source: its old thread announces its end first
                    self._pending.append(source)
                else:
                    self._start(source, "config")
        return len(added), len(removed)

    def add(self, source: SourceConfig) -> str:
        """Start `source` now (``POST /api/cameras``); returns its stream id. ClipwatchError (one line) if its id is
        in use, it clashes with another source, or the decoder has stopped."""
        with self._lock:
            if self._closed:
                raise ClipwatchError("the decoder has stopped; no camera can be added")
            stream_id = source.stream_id
            if stream_id is None:
                raise ConfigError(f"{source.path}: no such file or directory")
            if any(feed.source.stream_id == stream_id for feed in self._feeds):
                raise ConfigError(f"stream id {stream_id!r} is in use; remove it first or choose another id")
            if stream_id in self._stopping_ids() or any(s.stream_id == stream_id for s in self._pending):
                raise ConfigError(f"stream id {stream_id!r} is still stopping; try again in a moment")
            self._check_ids([*(feed.source for feed in self._feeds), source], f"source {stream_id!r}")
            self._start(source, "api")
        logger.info("decoder: source %s added", stream_id)
        return stream_id

    def remove(self, stream_id: str) -> bool:
        """Stop the source of `stream_id` (``DELETE /api/cameras/{id}``): it publishes the clip in hand, then its
        streams report ``ended`` / ``removed``. False if no running source has that id."""
        with self._lock:
            feed = next((feed for feed in self._feeds if feed.source.stream_id == stream_id), None)
            if feed is not None:
                self._remove(feed)
        if feed is not None:
            logger.info("decoder: source %s removed", stream_id)
        return feed is not None

    def _stopping_ids(self) -> set[str | None]:
        return {feed.source.stream_id for feed in self._stopping if not feed.done}

    def _check_ids(self, sources: list[SourceConfig], where: str) -> None:
        try:
            check_stream_ids(sources)
        except ValueError as error:
            raise ConfigError(f"{where}: {str(error).removeprefix('sources: ')}") from None

    def _start(self, source: SourceConfig, origin: str) -> None:
        """Start a thread for `source` (lock held)."""
        feed = _Feed(source, origin)
        feed.thread = threading.Thread(target=self._run_feed, args=(feed,), name=f"decoder-{next(self._numbers)}",
                                       daemon=True)
        self._feeds.append(feed)
        feed.thread.start()

    def _remove(self, feed: _Feed) -> None:
        """Halt `feed` (lock held); its streams are announced removed once its thread has ended."""
        self._feeds.remove(feed)
        feed.removed = True
        feed.halt.set()
        for reader in feed.readers:
            reader.close(timeout=0)
        if feed.done:
            self._announce_removed(feed)
        else:
            self._stopping.append(feed)

    def _announce_removed(self, feed: _Feed) -> None:
        for stream_id in feed.streams or [feed.source.stream_id]:
            if stream_id is not None:
                self.health.removed(stream_id)

    def _run_feed(self, feed: _Feed) -> None:
        try:
            self._run_source(feed)
        finally:
            with self._lock:
                feed.done = True
                if feed.removed:
                    self._announce_removed(feed)

    def _run_source(self, feed: _Feed) -> None:
        source = feed.source
        plans, bad = plan_streams(source)
        feed.streams = [plan.stream_id for plan in plans]
        for item in bad:
            self._skip(str(item))
        offsets: dict[str, int] = {}
        try:
            while plans and not feed.halt.is_set():
                if all(plan.is_file for plan in plans):
                    self._file_pass(plans, offsets, feed)
                else:
                    for plan in plans:
                        if feed.halt.is_set() or self.stop.is_set():
                            return
                        self._run_live(plan, feed)
                if not source.loop or feed.halt.is_set() or self.stop.is_set():
                    return
        except BusClosed:
            if not self.stop.is_set():
                raise
            logger.warning("decoder: source %s stopped with the bus closed on shutdown", feed.name)
        except BusError as error:
            logger.error("decoder: source %s stopped: %s", feed.name, error)
            self.report.failed.append(str(error))
            if self.board is not None:
                self.board.failed(self.name, str(error))

    def _file_pass(self, plans: list[StreamPlan], offsets: dict[str, int], feed: _Feed) -> None:
        """Publish every file of `plans` once: ``decoder.threads`` at a time (each file is its own stream, so
        their clips need no common order), or one after another when the source is paced (replayed cameras).
        Records each file's next seq offset in `offsets`; drops an unusable file from `plans`."""
        threads = 1 if feed.source.pace is not None else self.config.decoder.threads

        def one(plan: StreamPlan) -> tuple[StreamPlan, int | None | bool]:
            if feed.halt.is_set() or self.stop.is_set():
                return plan, False
            return plan, self._run_file(plan, offsets.get(plan.stream_id), feed.halt)

        if threads == 1 or len(plans) == 1:
            results = [one(plan) for plan in list(plans)]
        else:
            with ThreadPoolExecutor(min(threads, len(plans)), thread_name_prefix=f"{feed.name}-file") as pool:
                results = list(pool.map(one, list(plans)))
        for plan, offset in results:
            if offset is None:
                plans.remove(plan)  # unusable: skipped once, not at every loop
            elif offset is not False:
                offsets[plan.stream_id] = offset

    def _run_file(self, plan: StreamPlan, seq_offset: int | None, halt: threading.Event) -> int | None:
        """Publish a file's clips until its end or `halt`; returns the seq offset its next loop should use, None if
        the file is unusable."""
        if seq_offset is None:
            seq_offset = live_seq_start() if plan.source.loop else 0
        count = 0
        try:
            with open_video(plan.target, access="sequential", min_side=MIN_FRAME_SIDE) as reader:
                self.health.emit(plan.stream_id, "up", f"{reader.num_frames} frames")
                for message in file_clip_messages(reader, self.splitter(plan.source), plan.stream_id,
                                                  short_side=self.short_side, seq_offset=seq_offset,
                                                  pace=plan.source.pace, stop=halt):
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
            if halt.is_set():  # removed (its feed announces it) or stopped: not the end of the file
                if self.stop.is_set():
                    self.health.emit(plan.stream_id, "ended", f"stopped after {count} clips")
                return seq_offset + count
            self.health.emit(plan.stream_id, "ended", f"end of file, {count} clips")
            if count == 0 and plan.source.loop:
                self._skip(f"{plan.target}: shorter than one clip, cannot loop it")
                return None
            return seq_offset + count
        self.health.emit(plan.stream_id, "down", reason)
        self._skip(line)
        return None

    def _run_live(self, plan: StreamPlan, feed: _Feed) -> None:
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
            feed.readers.append(reader)
        try:
            if feed.halt.is_set():  # halted while connecting: its readers may have been closed before this one
                return
            for clip in self.splitter(source).clips(reader, plan.stream_id, first_seq=live_seq_start(),
                                                    short_side=self.short_side):
                if feed.halt.is_set() or not self._publish(clip_message(clip, short_side=self.short_side,
                                                                        source=describe_source(plan.target))):
                    break
        except (MessageError, VideoError) as error:
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
