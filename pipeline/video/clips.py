"""Fixed-length clips: planned over a file's frame indices, or assembled from a live frame-by-frame feed."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.video.errors import VideoError
from pipeline.video.events import Frame
from pipeline.video.preprocess import resize_target, resized_size, scale_down
from pipeline.video.reader import VideoReader, open_video


@dataclass(frozen=True, eq=False)
class Clip:
    """`clip_len` frames of one stream, the unit the classifier sees; `key` ("stream_id:seq") follows it end to end.

    Attributes:
        stream_id: the stream or file the clip comes from.
        seq: clip number within the stream, from 0.
        frames: (T, H, W, 3) uint8 RGB.
        first_frame, last_frame: source frame indices of the first and last frame (inclusive).
        pts: (T,) float64 presentation times in seconds.
    """

    stream_id: str
    seq: int
    frames: np.ndarray
    first_frame: int
    last_frame: int
    pts: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.stream_id}:{self.seq}"

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class ClipSplitter:
    """Where clips start and which frames they take.

    A clip takes `clip_len` frames, `frame_step` apart (so it spans `(clip_len - 1) * frame_step + 1` source frames);
    clip k starts at source frame `k * stride`. Only whole clips are produced: a tail shorter than a span is left
    out. C3D-style non-overlapping 16-frame clips are the default.
    """

    clip_len: int = 16
    stride: int = 16
    frame_step: int = 1

    def __post_init__(self) -> None:
        for name in ("clip_len", "stride", "frame_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ClipSplitter: {name} must be a positive integer, got {value!r}")

    @property
    def span(self) -> int:
        """Source frames one clip covers, first to last inclusive."""
        return (self.clip_len - 1) * self.frame_step + 1

    def plan(self, num_frames: int) -> list[np.ndarray]:
        """Frame indices (int64, increasing) of every whole clip of a `num_frames`-frame video."""
        starts = range(0, num_frames - self.span + 1, self.stride)
        offsets = np.arange(self.clip_len, dtype=np.int64) * self.frame_step
        return [start + offsets for start in starts]

    def assembler(self, stream_id: str, first_seq: int = 0, *, short_side: int | None = None) -> ClipAssembler:
        """A push-style builder of clips from a live feed, one frame at a time (see `ClipAssembler`)."""
        return ClipAssembler(self, stream_id, first_seq, short_side=short_side)

    def clips(self, frames: Iterable[Frame], stream_id: str | None = None, first_seq: int = 0, *,
              short_side: int | None = None) -> Iterator[Clip]:
        """Clips of a frame feed (a live stream or `open_source(...)`), as soon as each is complete.

        `stream_id` defaults to the feed's own `stream_id` (sources from `open_source` have one); `short_side` as in
        `ClipAssembler`.
        """
        stream_id = stream_id if stream_id is not None else getattr(frames, "stream_id", None)
        if stream_id is None:
            raise ValueError("ClipSplitter.clips: give a stream_id for a feed that has none")
        assembler = self.assembler(stream_id, first_seq, short_side=short_side)
        for frame in frames:
            clip = assembler.push(frame)
            if clip is not None:
                yield clip


class ClipAssembler:
    """Builds clips from consecutive frames with the same start grid as `ClipSplitter.plan`.

    A discontinuity (a new segment after a reconnect, or dropped frames shown by a gap in `Frame.index`) discards
    the partial clip and restarts the grid at the next frame, so a clip never spans a gap in time. Sequence numbers
    keep counting across discontinuities. Holds at most one span of frames.

    With `short_side`, a frame is scaled down to it (as `iter_file_clips` does) when a clip first takes it, and
    kept scaled for the next clip that shares it: frames the frame step skips are never scaled. Frames too large to
    scale within the resize limit raise VideoError (one line, naming the stream).
    """

    def __init__(self, splitter: ClipSplitter, stream_id: str, first_seq: int = 0, *, short_side: int | None = None):
        self.splitter = splitter
        self.stream_id = stream_id
        self.next_seq = first_seq
        self.short_side = short_side
        self._window: deque[Frame] = deque()
        self._last: Frame | None = None
        self._position = 0
        self._next_start = 0

    def reset(self) -> None:
        """Drop the partial clip; the next frame starts a new grid."""
        self._window.clear()
        self._position = 0
        self._next_start = 0

    def push(self, frame: Frame) -> Clip | None:
        """Add the next frame; returns the clip it completes, if any (at most one per frame)."""
        last = self._last
        if last is not None and (frame.segment != last.segment or frame.index != last.index + 1):
            self.reset()
        self._last = frame
        position = self._position
        self._position += 1
        if position < self._next_start:
            return None
        self._window.append(frame)
        if position < self._next_start + self.splitter.span - 1:
            return None
        chosen = self._chosen()
        clip = Clip(
            stream_id=self.stream_id,
            seq=self.next_seq,
            frames=np.stack([item.image for item in chosen]),
            first_frame=chosen[0].index,
            last_frame=chosen[-1].index,
            pts=np.array([item.pts for item in chosen], dtype=np.float64),
        )
        self.next_seq += 1
        self._next_start += self.splitter.stride
        for _ in range(min(self.splitter.stride, len(self._window))):
            self._window.popleft()
        return clip

    def _chosen(self) -> list[Frame]:
        """The frames of the clip the window completes, those larger than `short_side` scaled down in one call."""
        offsets = range(0, self.splitter.span, self.splitter.frame_step)
        if self.short_side is not None:
            large = [offset for offset in offsets if min(self._window[offset].image.shape[:2]) > self.short_side]
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for offset in large:
                by_shape.setdefault(self._window[offset].image.shape, []).append(offset)
            for shape, group in by_shape.items():
                try:
                    resize_target(len(group), *shape[:2], self.short_side)
                except ValueError as error:
                    raise VideoError(self.stream_id, str(error)) from None
                scaled = scale_down(np.stack([self._window[offset].image for offset in group]), self.short_side)
                for offset, image in zip(group, scaled, strict=True):
                    self._window[offset] = replace(self._window[offset], image=image)
        return [self._window[offset] for offset in offsets]


def iter_file_clips(source: str | os.PathLike | VideoReader, splitter: ClipSplitter | None = None,
                    stream_id: str | None = None, *, short_side: int | None = None) -> Iterator[Clip]:
    """Clips of a video file in plan order, one `get_frames` call per clip.

    Frames shared with the next clip (stride < span) are kept and not decoded again, so the reader only ever moves
    forward and decord never seeks back; they are kept as a view of the clip's array, so treat `clip.frames` as
    read-only until the next clip has been drawn. `source` is a path (opened for sequential access, validated and closed
    here; VideoError if unusable) or an open VideoReader (left open). `stream_id` defaults to the file's stem.

    With `short_side`, frames whose shorter side is longer are scaled down to it as soon as they are decoded, by
    `pipeline.video.preprocess.resize_frames` (the pixels `preprocess` would compute from the full frames): each
    frame is resized once, however many clips share it, and only small frames are kept and copied.
    """
    splitter = splitter or ClipSplitter()
    reader = source if isinstance(source, VideoReader) else open_video(source, access="sequential")
    stream_id = stream_id if stream_id is not None else Path(reader.path).stem
    try:
        read, frame_shape = _scaled_reader(reader, short_side, splitter.clip_len)
        plan = splitter.plan(reader.num_frames)
        kept_indices, kept = np.zeros(0, dtype=np.int64), None
        for seq, indices in enumerate(plan):
            frames = _frames_for(read, frame_shape, indices, kept_indices, kept)
            if seq + 1 < len(plan):
                kept_indices = np.intersect1d(indices, plan[seq + 1])
                kept = _rows(frames, np.searchsorted(indices, kept_indices)) if kept_indices.size else None
            yield Clip(stream_id, seq, frames, int(indices[0]), int(indices[-1]), reader.get_timestamps(indices))
    finally:
        if reader is not source:
            reader.close()


def _rows(frames: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``frames[positions]``, as a view (no copy) when the positions are consecutive."""
    if positions[-1] - positions[0] + 1 == positions.size:
        return frames[positions[0] : positions[-1] + 1]
    return frames[positions]


def _scaled_reader(reader: VideoReader, short_side: int | None, clip_len: int
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int]]:
    """``(read, (height, width))``: a `get_frames` whose frames are scaled down to `short_side` (never up), and
    the frame size it returns; VideoError (one line) if a clip of such frames would exceed the resize limit."""
    if short_side is None or min(reader.height, reader.width) <= short_side:
        return reader.get_frames, (reader.height, reader.width)
    try:
        resize_target(clip_len, reader.height, reader.width, short_side)
    except ValueError as error:
        raise VideoError(reader.path, str(error)) from None

    def read(indices: np.ndarray) -> np.ndarray:
        return scale_down(reader.get_frames(indices), short_side)

    return read, resized_size(reader.height, reader.width, short_side)


def _frames_for(read: Callable[[np.ndarray], np.ndarray], frame_shape: tuple[int, int], indices: np.ndarray,
                kept_indices: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
    """The frames at `indices`, taking those in `kept_indices` from `kept` and reading only the others."""
    if kept is None:
        return read(indices)
    known = np.isin(indices, kept_indices)
    shared = int(known.sum())
    if known[:shared].all() and shared < indices.size:
        # The usual forward sweep: the kept frames open the clip; one copy joins them to the new ones.
        return np.concatenate((_rows(kept, np.searchsorted(kept_indices, indices[:shared])),
                               read(indices[shared:])))
    frames = np.empty((indices.size, *frame_shape, 3), dtype=np.uint8)
    frames[known] = kept[np.searchsorted(kept_indices, indices[known])]
    if not known.all():
        frames[~known] = read(indices[~known])
    return frames
