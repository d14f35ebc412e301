"""Container probing with PyAV: one demux pass (decoding only the first frame) that says whether a file is a
usable video, whether it is truncated or corrupt, and whether decord's random access can be trusted on it.

decord counts frames by counting packets and seeks by the packets' presentation timestamps, so it goes wrong when
packets are missing timestamps (AVI with B-frames), are hidden by an edit list (stream-copied MP4 cuts), carry
broken data (truncated files), or when the container has no seek index (MPEG-TS/PS). Every one of those shows in
the packet table, which is cheap to read: it costs file I/O, not decoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.video.errors import VideoError, error_reason

SEEKABLE_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})
"""Containers with a seek index, where decord's timestamp seeking lands on the frame it asks for."""

_STILL_IMAGE_SUFFIX = "_pipe"
_NO_PTS = np.iinfo(np.int64).min


@dataclass(frozen=True)
class ContainerScan:
    """What one demux pass over a file's video stream found; counts are of video packets that carry data.
    `first_frame` is the first frame FFmpeg decodes (RGB), the reference decord's first frame is checked against."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    fps: float
    time_base: Fraction
    start_pts: int
    declared_frames: int
    declared_duration: float | None
    packet_pts: np.ndarray
    keyframes: np.ndarray
    corrupt_packets: int
    discarded_packets: int
    demux_error: str | None
    first_frame: np.ndarray | None

    @property
    def num_packets(self) -> int:
        return int(self.packet_pts.size)

    @property
    def missing_pts(self) -> int:
        return int(np.count_nonzero(self.packet_pts == _NO_PTS))

    def frame_times(self) -> np.ndarray:
        """Presentation time in seconds of each frame in display order, 0 at the first frame (float64)."""
        if self.missing_pts == 0:
            ordered = np.sort(self.packet_pts)
            return (ordered - ordered[0]).astype(np.float64) * float(self.time_base)
        return frame_times_from_rate(self.num_packets, self.fps)

    def truncation(self) -> str | None:
        """Why the file looks cut short or damaged, or None when its packets are all there."""
        if self.demux_error is not None:
            return f"corrupt or truncated: reading stopped at packet {self.num_packets} ({self.demux_error})"
        if self.declared_frames > self.num_packets:
            return (f"truncated: the container declares {self.declared_frames} frames "
                    f"but only {self.num_packets} are present")
        if self.corrupt_packets:
            return f"corrupt or truncated: {self.corrupt_packets} of {self.num_packets} video packets are damaged"
        present = self._present_duration()
        if self.declared_duration and present is not None and self.fps > 0:
            tolerance = max(2.0 / self.fps, 0.02 * self.declared_duration)
            if self.declared_duration - present > tolerance:
                return (f"truncated: the container declares {self.declared_duration:.2f} s "
                        f"but its frames end at {present:.2f} s")
        return None

    def random_access_problem(self) -> str | None:
        """Why decord's frame indexing or seeking would be wrong on this file, or None when it can be trusted."""
        if self.container not in SEEKABLE_CONTAINERS:
            return f"container '{self.container}' has no seek index"
        if self.missing_pts:
            return f"{self.missing_pts} packets have no presentation timestamp"
        if np.unique(self.packet_pts).size != self.num_packets:
            return "duplicate presentation timestamps"
        if self.discarded_packets:
            return f"{self.discarded_packets} packets are hidden by an edit list"
        if not self.keyframes[0]:
            return "the stream does not start with a keyframe"
        return None

    def _present_duration(self) -> float | None:
        if self.missing_pts or self.fps <= 0:
            return None
        last_end = int(self.packet_pts.max()) - self.start_pts
        return last_end * float(self.time_base) + 1.0 / self.fps


def frame_times_from_rate(num_frames: int, fps: float) -> np.ndarray:
    """Presentation times of a constant-rate stream, or NaN when the rate is unknown."""
    if fps > 0:
        return np.arange(num_frames, dtype=np.float64) / fps
    return np.full(num_frames, np.nan)


def check_file(path: str | os.PathLike) -> Path:
    """`path` as a Path after the checks that need no decoder: it exists, is a regular file, and is not empty."""
    file = Path(path)
    if not file.exists():
        raise VideoError(path, "no such file")
    if not file.is_file():
        raise VideoError(path, "not a regular file")
    if file.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    return file


def scan_container(path: str | os.PathLike) -> ContainerScan:
    """Open `path` with PyAV and read its video packet table; raises VideoError when it is not a usable video."""
    file = check_file(path)
    try:
        container = av.open(str(file))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(path, _unreadable_reason(file, error)) from None
    with container:
        format_name = container.format.name
        if format_name.endswith(_STILL_IMAGE_SUFFIX) or format_name == "image2":
            raise VideoError(path, f"a still image ({format_name}), not a video")
        if not container.streams.video:
            raise VideoError(path, "no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        if context is None or not context.name:
            raise VideoError(path, "no decoder for its video codec")
        if context.width <= 0 or context.height <= 0:
            raise VideoError(path, f"invalid frame size {context.width}x{context.height}")
        pts, keyframes, corrupt, discarded, demux_error, first_frame = _read_packets(container, stream)
        time_base = stream.time_base or Fraction(1, 1)
        return ContainerScan(
            path=str(path),
            container=format_name,
            codec=context.name,
            width=context.width,
            height=context.height,
            fps=_frame_rate(stream, pts, time_base),
            time_base=time_base,
            start_pts=_start_pts(stream, pts),
            declared_frames=max(int(stream.frames or 0), 0),
            declared_duration=_declared_duration(container, stream, time_base),
            packet_pts=pts,
            keyframes=keyframes,
            corrupt_packets=corrupt,
            discarded_packets=discarded,
            demux_error=demux_error,
            first_frame=first_frame,
        )


def _read_packets(container, stream) -> tuple[np.ndarray, np.ndarray, int, int, str | None, np.ndarray | None]:
    """The packet table, plus the first decoded frame (RGB): decoding stops as soon as one frame comes out."""
    pts: list[int] = []
    keyframes: list[bool] = []
    corrupt = discarded = 0
    demux_error = None
    first_frame = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            pts.append(_NO_PTS if packet.pts is None else int(packet.pts))
            keyframes.append(bool(packet.is_keyframe))
            corrupt += bool(packet.is_corrupt)
            discarded += bool(packet.is_discard)
            if first_frame is None and not packet.is_discard:
                first_frame = _decode_first(packet)
    except av.FFmpegError as error:
        demux_error = error_reason(error)
    if not pts:
        raise VideoError(container.name, f"no video frames ({demux_error})" if demux_error else "no video frames")
    return (np.asarray(pts, dtype=np.int64), np.asarray(keyframes, dtype=bool), corrupt, discarded, demux_error,
            first_frame)


def _decode_first(packet) -> np.ndarray | None:
    try:
        frames = packet.decode()
    except av.FFmpegError:
        return None
    return VideoReformatter().reformat(frames[0], format="rgb24").to_ndarray() if frames else None


def _frame_rate(stream, pts: np.ndarray, time_base: Fraction) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    valid = np.sort(pts[pts != _NO_PTS])
    if valid.size > 1 and valid[-1] > valid[0]:
        return float((valid.size - 1) / ((valid[-1] - valid[0]) * time_base))
    return 0.0


def _start_pts(stream, pts: np.ndarray) -> int:
    if stream.start_time is not None:
        return int(stream.start_time)
    valid = pts[pts != _NO_PTS]
    return int(valid.min()) if valid.size else 0


def _declared_duration(container, stream, time_base: Fraction) -> float | None:
    """The video stream's duration from the header: its own field, Matroska's DURATION tag, or the container's
    duration when the video is its only stream (a longer audio track must not make the video look truncated)."""
    if stream.duration:
        return float(stream.duration * time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _unreadable_reason(file: Path, error: BaseException) -> str:
    with file.open("rb") as handle:
        head = handle.read(12)
    if head[4:8] == b"ftyp":
        return "MP4/MOV without a readable index (moov atom): truncated, or still being written"
    return f"not a readable video ({error_reason(error)})"
