"""Decode step: sources → streams → clips → `ClipMessage`s, without threads or a bus.

Clip geometry comes from the model's preprocessing (clip length, frame step; stride per source). With a
`short_side` (``decoder.resize: model``, the default) frames are resized so their shorter side is the model's
before publishing, with the very operation `pipeline.video.preprocess` applies: the classifier then skips its own
resize and sees bit-identical pixels, while a 1080p clip shrinks ~70× on the bus. Smaller frames travel as they are.
Frames are scaled as they are decoded (`iter_file_clips`, `ClipSplitter.clips`), once each, however many
overlapping clips take them.

Clip keys: files start at seq 0, so decoding a file again yields the same keys and everything downstream
recognises them as already done. Live sources and looped files start at the current time in milliseconds
(`live_seq_start`), so keys stay unique across decoder restarts.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import SourceConfig
from pipeline.models import Preprocessing
from pipeline.stream.messages import ClipMessage, MessageError
from pipeline.video import Clip, ClipSplitter, VideoReader, iter_file_clips
from pipeline.video.preprocess import scale_down
from pipeline.video.scan import BadVideo, find_video_files

__all__ = ["StreamPlan", "clip_message", "file_clip_messages", "live_seq_start", "plan_streams", "splitter_for"]


def splitter_for(preprocessing: Preprocessing, stride: int | None = None) -> ClipSplitter:
    """The clip splitter of a model: its clip length and frame step, `stride` frames between clip starts."""
    return ClipSplitter(preprocessing.clip_len, stride or preprocessing.clip_len, preprocessing.frame_step)


def clip_message(clip: Clip, *, short_side: int | None = None, source: str | None = None,
                 seq_offset: int = 0) -> ClipMessage:
    """The message of one clip, its frames' shorter side scaled down to `short_side` if given (never up), its
    sequence number moved by `seq_offset`; MessageError (one line) if the clip cannot travel."""
    frames = clip.frames
    try:
        if short_side is not None:
            frames = scale_down(frames, short_side)
    except ValueError as error:
        raise MessageError(f"clip {clip.stream_id}:{clip.seq + seq_offset}: {error}") from None
    return ClipMessage.from_array(frames, stream_id=clip.stream_id, seq=clip.seq + seq_offset,
                                  first_frame=clip.first_frame, last_frame=clip.last_frame, pts=clip.pts,
                                  source=source)


def file_clip_messages(path: str | Path | VideoReader, splitter: ClipSplitter, stream_id: str, *,
                       short_side: int | None = None, seq_offset: int = 0, pace: float | None = None,
                       stop: threading.Event | None = None) -> Iterator[ClipMessage]:
    """The clip messages of one video file (a path, or an open reader left open), in order.

    VideoError (one line) if the file cannot be used. With `pace`, each clip is released when its last frame would
    have been shown playing the file at `pace` times real time (a recorded camera replayed live).
    """
    started = time.monotonic()
    name = str(path.path if isinstance(path, VideoReader) else path)
    for clip in iter_file_clips(path, splitter, stream_id, short_side=short_side):
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
    names = _directory_stream_names([video.relative_to(path) for video in videos])
    return [StreamPlan(f"{source.stream_id}/{name}", str(video), source, True)
            for video, name in zip(videos, names, strict=True)], []


def _directory_stream_names(relative: list[Path]) -> list[str]:
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
