"""`open_source`: one entry point for every input, returning an iterable of Frames with health events."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pipeline.video.events import EventCallback, Frame, Health, HealthReporter, StreamEvent
from pipeline.video.reader import VideoReader
from pipeline.video.stream import StreamReader, camera_index


class FrameSource(Protocol):
    """What `open_source` returns: iterate Frames until the source ends; health events on the way."""

    stream_id: str

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    @property
    def events(self) -> list[StreamEvent]: ...


class FileSource:
    """A video file read as a feed of Frames, in order, through VideoReader (decord or its PyAV fallback).

    Opening validates the file (VideoError if unusable). Frames are decoded `max_batch_bytes` at a time; events are
    UP when iteration starts and ENDED at the end of the file or on `close()`.
    """

    def __init__(self, path: str | os.PathLike, *, stream_id: str | None = None, on_event: EventCallback | None = None,
                 max_batch_bytes: int = 4 << 20, num_threads: int = 0, strict: bool = True, min_side: int = 1):
        self.reader = VideoReader(path, num_threads=num_threads, strict=strict, min_side=min_side)
        self.stream_id = stream_id or Path(self.reader.path).stem
        self._batch = max(1, max_batch_bytes // (self.reader.height * self.reader.width * 3))
        self._reporter = HealthReporter(self.stream_id, on_event)
        self._closed = False

    @property
    def health(self) -> Health | None:
        return self._reporter.health

    @property
    def events(self) -> list[StreamEvent]:
        return self._reporter.events

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            return
        self._reporter.emit(Health.UP, f"{self.reader.num_frames} frames")
        total = self.reader.num_frames
        for start in range(0, total, self._batch):
            indices = range(start, min(start + self._batch, total))
            images = self.reader.get_frames(indices)
            times = self.reader.get_timestamps(indices)
            now = time.time()
            for offset, index in enumerate(indices):
                if self._closed:
                    return
                yield Frame(images[offset], index, float(times[offset]), now, 0)
        self._finish("end of file")

    def close(self) -> None:
        self._finish("closed")

    def _finish(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self.reader.close()
            self._reporter.emit(Health.ENDED, reason)

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_source(source: str | int | os.PathLike, **options) -> FileSource | StreamReader:
    """A frame source for a file path, a stream URI (rtsp://, http(s)://, udp://, file://, ...) or a camera index.

    Paths give a FileSource (random-access reader, validated now); URIs and cameras give a StreamReader (live, with
    reconnects, started on first use). `options` go to that class. Either is iterable over Frames, works with
    `ClipSplitter.clips`, reports health events, and is a context manager.
    """
    if camera_index(source) is not None or (isinstance(source, str) and "://" in source):
        return StreamReader(source, **options)
    return FileSource(source, **options)
