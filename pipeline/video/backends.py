"""The decoders behind VideoReader: decord random access, OpenCV for forward sweeps over clean files, and PyAV
sequential decoding as the safe fallback.

Both take sorted, unique, in-range frame indices and return (T, H, W, 3) uint8 RGB frames in that order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import av
import cv2
import decord
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.video.errors import VideoError, error_reason
from pipeline.video.probe import frame_times_from_rate

# decord logs every recoverable FFmpeg decoder message to stderr; errors reach us as exceptions instead.
decord.logging.set_level(decord.logging.QUIET)

FIRST_FRAME_TOLERANCE = 2.0
"""Largest mean absolute difference (0-255 levels) between decord's and PyAV's first frame that still counts as the
same frame; two FFmpeg builds may convert YUV to RGB with slightly different rounding."""


_PLAUSIBLE_SECONDS = 1e7
_DECORD_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: )?")


def decord_reason(error: BaseException) -> str:
    """decord's error message without its "[time] source.cc:line:" prefix."""
    return _DECORD_LOG_PREFIX.sub("", error_reason(error))


class DecordBackend:
    """decord's VideoReader: random access by keyframe seek plus decode, `get_batch` for many frames at once."""

    name = "decord"

    def __init__(self, path: str, num_threads: int):
        self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        self.num_frames = len(self._reader)

    def index_problem(self) -> str | None:
        """Why decord's own frame table (which its seeking relies on) is unusable, or None when it is sound."""
        starts = self._reader.get_frame_timestamp(range(self.num_frames))[:, 0].astype(np.float64)
        if not np.all(np.isfinite(starts)) or starts.min() < -_PLAUSIBLE_SECONDS:
            return "decord sees frames without presentation timestamps"
        if np.any(np.diff(starts) <= 0):
            return "decord sees duplicate presentation timestamps"
        return None

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self._reader.get_batch(indices.tolist()).asnumpy()

    def close(self) -> None:
        self._reader = None


class OpenCVBackend:
    """OpenCV (FFmpeg) decoding in file order: the cheapest way through a whole clean file, every frame decoded once.

    Only used for files whose packet table holds one frame per packet and whose first frame OpenCV decodes as
    FFmpeg does (VideoReader checks both), so the n-th frame read is frame n. Frames that are not wanted are
    grabbed (decoded, not converted); asking for an earlier frame reopens the file. A frame of another size than
    the stream's raises RuntimeError (VideoReader then falls back to PyAV) rather than being rescaled.
    """

    name = "opencv"

    def __init__(self, path: str, num_frames: int, num_threads: int, frame_shape: tuple[int, int]):
        self._path = path
        self._threads = num_threads
        self._shape = (*frame_shape, 3)
        self._capture: cv2.VideoCapture | None = None
        self._position = 0
        self.num_frames = num_frames
        self._open()

    def _open(self) -> None:
        self.close()
        capture = cv2.VideoCapture(self._path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, self._threads])
        if not capture.isOpened():
            raise RuntimeError("OpenCV cannot open the file")
        self._capture, self._position = capture, 0

    def read(self, indices: np.ndarray) -> np.ndarray:
        if self._capture is None or indices[0] < self._position:
            self._open()
        out: np.ndarray | None = None
        for i, target in enumerate(indices.tolist()):
            while self._position < target:
                if not self._capture.grab():
                    raise RuntimeError(f"OpenCV stops at frame {self._position}")
                self._position += 1
            ok, image = self._capture.read()
            if not ok:
                raise RuntimeError(f"OpenCV stops at frame {self._position}")
            self._position += 1
            if image.shape != self._shape:
                raise RuntimeError(f"OpenCV decodes frame {self._position - 1} at {image.shape[1]}x{image.shape[0]}, "
                                   f"the stream is {self._shape[1]}x{self._shape[0]}")
            if out is None:
                out = np.empty((indices.size, *self._shape), dtype=np.uint8)
            cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=out[i])
        return out

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture = None


class SequentialBackend:
    """PyAV decoding from the start of the file, frame by frame, skipping damaged packets and ones that fail to decode.

    Frame i is the i-th frame the decoder outputs, so indexing is exact whatever the container's timestamps or seek
    index say. The frame count comes from the caller (a clean packet table: one frame per packet) or, when
    `frame_times` is None, from one decode pass at opening (no colour conversion). Reading continues from the
    current position and restarts from the beginning only when asked for an earlier frame.
    """

    name = "pyav"

    def __init__(self, path: str, fps: float, frame_times: np.ndarray | None = None):
        self._path = path
        self._container = None
        self._frames: Iterator | None = None
        self._position = 0
        self._rgb = VideoReformatter()
        self.frame_times = self._count(fps) if frame_times is None else frame_times
        self.num_frames = int(self.frame_times.size)

    def read(self, indices: np.ndarray) -> np.ndarray:
        if self._frames is None or indices[0] < self._position:
            self._restart()
        wanted = iter(indices.tolist())
        target = next(wanted)
        out = []
        for frame in self._frames:
            position = self._position
            self._position += 1
            if position == target:
                out.append(self._rgb.reformat(frame, format="rgb24").to_ndarray())
                target = next(wanted, None)
                if target is None:
                    return np.stack(out)
        self._frames = None
        raise VideoError(self._path, f"frame {target} does not decode (only {self._position} frames do)")

    def _count(self, fps: float) -> np.ndarray:
        times = [np.nan if frame.time is None else float(frame.time) for frame in self._decode_all()]
        if not times:
            raise VideoError(self._path, "no frame decodes")
        pts = np.asarray(times, dtype=np.float64)
        if np.isnan(pts).any() or np.any(np.diff(pts) <= 0):
            return frame_times_from_rate(pts.size, fps)
        return pts - pts[0]

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None

    def _restart(self) -> None:
        self.close()
        self._frames = self._decode_all(keep_open=True)
        self._position = 0

    def _decode_all(self, keep_open: bool = False) -> Iterator[av.VideoFrame]:
        container = av.open(self._path)
        if keep_open:
            self._container = container
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    continue
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    continue
                yield from frames
        except av.FFmpegError as error:
            if not keep_open:
                raise VideoError(self._path, f"decoding failed ({error_reason(error)})") from None
        finally:
            if not keep_open:
                container.close()


def same_frame(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two decodes of one frame agree (same shape, colour conversion differences only)."""
    if a.shape != b.shape:
        return False
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) <= FIRST_FRAME_TOLERANCE
