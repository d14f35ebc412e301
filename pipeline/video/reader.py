"""VideoReader: exact frames of a video file by index, decord where its random access is reliable, PyAV otherwise."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import decord
import numpy as np

from pipeline.video.backends import DecordBackend, OpenCVBackend, SequentialBackend, decord_reason, same_frame
from pipeline.video.errors import VideoError
from pipeline.video.probe import ContainerScan, scan_container

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """A validated video file: what a directory scan reports for each good file."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    fps: float
    num_frames: int
    backend: str

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else float("nan")


class VideoReader:
    """Exact-frame reader for one video file; `get_frames(indices)` returns (T, H, W, 3) uint8 RGB.

    Opening validates the file (one demux pass with PyAV, decoding only the first frame) and raises VideoError for
    empty, non-video, still-image, truncated or corrupt files. Frames come from decord (`get_batch`, random access)
    unless the packet table shows decord would index or seek wrongly (AVI with B-frames, edit lists, MPEG-TS, ...),
    its frame count disagrees, or its first frame differs from FFmpeg's: then from PyAV sequential decoding, and
    `fallback_reason` says why. A decord error while reading also switches to PyAV for good. Not thread-safe: one
    reader per thread.

    Args:
        path: the video file.
        num_threads: decoder threads for decord (0: FFmpeg's choice) and OpenCV (0 counts as 1: the other pipeline
            stages want the other cores).
        strict: raise VideoError for truncated or corrupt files; with False, read the frames that do decode.
        min_side: smallest accepted frame width and height in pixels.
        access: "random" (decord, any order) or "sequential" (frames asked for in increasing order, e.g. by
            `iter_file_clips`): then a file with one frame per packet is decoded by OpenCV, each frame once, which
            is cheaper than decord's seek-and-decode and needs no seek index; anything else takes the other routes.
    """

    def __init__(self, path: str | os.PathLike, *, num_threads: int = 0, strict: bool = True, min_side: int = 1,
                 access: str = "random"):
        if access not in ("random", "sequential"):
            raise ValueError(f"access must be 'random' or 'sequential', got {access!r}")
        self.path = os.fspath(path)
        scan = scan_container(self.path)
        if min(scan.width, scan.height) < min_side:
            raise VideoError(self.path, f"frame size {scan.width}x{scan.height} is below the minimum of {min_side} px")
        damage = scan.truncation()
        if damage is not None and strict:
            raise VideoError(self.path, damage)
        self.container = scan.container
        self.codec = scan.codec
        self.fps = scan.fps
        self.fallback_reason: str | None = damage or scan.random_access_problem()
        self._times = scan.frame_times()
        # A clean packet table holds one frame per packet; otherwise the fallback counts frames by decoding.
        self._packets_are_frames = (damage is None and scan.corrupt_packets == 0 and scan.discarded_packets == 0
                                    and bool(scan.keyframes[0]) and scan.first_frame is not None)
        self._backend: DecordBackend | SequentialBackend | None = None
        self._cached_first: np.ndarray | None = None
        first = None
        if access == "sequential" and self._packets_are_frames:
            # In file order nothing seeks: decord's seek-index and timestamp pitfalls do not apply, damage does.
            first = self._open_opencv(scan, num_threads)
        if first is None and self.fallback_reason is None:
            first = self._open_decord(scan, num_threads)
        if first is None:
            self._use_sequential()
        self.height, self.width = (scan.height, scan.width) if first is None else first.shape[:2]

    @property
    def num_frames(self) -> int:
        return self._backend.num_frames

    @property
    def backend(self) -> str:
        """Which decoder serves frames: "decord", "opencv" or "pyav"."""
        return self._backend.name

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.path, self.container, self.codec, self.width, self.height, self.fps, self.num_frames,
                         self.backend)

    def __len__(self) -> int:
        return self.num_frames

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The frames at `indices` (any order, repeats allowed) as one (T, H, W, 3) uint8 RGB array."""
        wanted = self._check_indices(indices)
        if wanted.size == 0:
            return np.zeros((0, self.height, self.width, 3), dtype=np.uint8)
        unique, inverse = np.unique(wanted, return_inverse=True)
        frames = self._read(unique)
        if unique.size == wanted.size and np.array_equal(unique, wanted):
            return frames
        return frames[inverse]

    def get_timestamps(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Presentation times in seconds (float64, 0 at the first frame) of the frames at `indices`."""
        return self._times[self._check_indices(indices)]

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoReader({self.path!r}, {self.num_frames} frames, {self.width}x{self.height} @ {self.fps:.3g} fps,"
                f" backend={self.backend})")

    def _open_decord(self, scan: ContainerScan, num_threads: int) -> np.ndarray | None:
        """Use decord if its frame table is sound and its first frame is FFmpeg's; returns that frame, or None."""
        try:
            backend = DecordBackend(self.path, num_threads)
            if backend.num_frames != scan.num_packets:
                self.fallback_reason = f"decord counts {backend.num_frames} frames, the file has {scan.num_packets}"
                return None
            self.fallback_reason = backend.index_problem()
            if self.fallback_reason is not None:
                return None
            first = backend.read(np.zeros(1, dtype=np.int64))[0]
        except (decord.DECORDError, RuntimeError) as error:
            self.fallback_reason = f"decord failed ({decord_reason(error)})"
            return None
        if scan.first_frame is None or not same_frame(first, scan.first_frame):
            self.fallback_reason = "decord's first frame differs from FFmpeg's"
            return None
        self._backend = backend
        self._cached_first = first
        return first

    def _open_opencv(self, scan: ContainerScan, num_threads: int) -> np.ndarray | None:
        """Use OpenCV if it decodes the first frame as FFmpeg does; returns that frame, or None (then decord is tried)."""
        backend = None
        try:
            backend = OpenCVBackend(self.path, scan.num_packets, max(num_threads, 1), (scan.height, scan.width))
            first = backend.read(np.zeros(1, dtype=np.int64))[0]
        except (RuntimeError, cv2.error) as error:
            logger.debug("%s: not reading with OpenCV: %s", self.path, error)
            first = None
        if first is None or scan.first_frame is None or not same_frame(first, scan.first_frame):
            if backend is not None:
                backend.close()
            return None
        self._backend = backend
        self._cached_first = first
        return first

    def _use_sequential(self) -> None:
        if self._backend is not None:
            self._backend.close()
        logger.debug("%s: reading sequentially with PyAV: %s", self.path, self.fallback_reason)
        self._backend = SequentialBackend(self.path, self.fps, self._times if self._packets_are_frames else None)
        self._times = self._backend.frame_times

    def _read(self, indices: np.ndarray) -> np.ndarray:
        if self._backend.name in ("decord", "opencv"):
            try:
                if self._cached_first is not None:
                    return self._read_after_first(indices)
                return self._backend.read(indices)
            except (decord.DECORDError, RuntimeError, cv2.error) as error:
                self.fallback_reason = f"{self._backend.name} failed reading frames ({decord_reason(error)})"
                self._use_sequential()
        if indices[-1] >= self.num_frames:
            raise VideoError(self.path, f"frame {int(indices[-1])} does not decode ({self.num_frames} frames do)")
        return self._backend.read(indices)

    def _read_after_first(self, indices: np.ndarray) -> np.ndarray:
        """The first read after opening: the decoder stands just past frame 0, which validation already decoded."""
        first, self._cached_first = self._cached_first, None
        if indices[0] != 0:
            return self._backend.read(indices)
        if indices.size == 1:
            return first[None].copy()
        rest = self._backend.read(indices[1:])
        return np.concatenate([first[None], rest])

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        wanted = np.asarray(indices)
        if wanted.size and not np.issubdtype(wanted.dtype, np.integer):
            raise TypeError(f"{self.path}: frame indices must be integers, got {wanted.dtype}")
        wanted = wanted.astype(np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.num_frames):
            bad = wanted[(wanted < 0) | (wanted >= self.num_frames)]
            raise IndexError(f"{self.path}: frame indices {bad[:5].tolist()} outside 0..{self.num_frames - 1}")
        return wanted


def open_video(path: str | os.PathLike, *, num_threads: int = 0, strict: bool = True, min_side: int = 1,
               access: str = "random") -> VideoReader:
    """Open and validate a video file (see VideoReader); raises VideoError with a one-line reason naming it."""
    return VideoReader(path, num_threads=num_threads, strict=strict, min_side=min_side, access=access)
