"""Real test inputs for the video tests: encoded files whose frames carry their own index, and live ffmpeg streams.

Every frame written by `write_indexed_video` shows its index as a row of black/white bit blocks (grey, full
contrast), which survives H.264 and MJPEG compression and chroma subsampling, so a test can read back which frame a
decoder really returned with `read_index`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

INDEX_BITS = 10
"""Bits of the frame index drawn into each frame (up to 1023 frames)."""

CODEC_ARGS = {
    # libx264 with B-frames and a short GOP, so that random access really has to seek and reorder.
    "h264": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-g", "12", "-bf", "2", "-pix_fmt", "yuv420p"],
    "h264_444": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-g", "12", "-pix_fmt", "yuv444p"],
    "mjpeg": ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"],
    "mjpeg_444": ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj444p"],
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "2", "-g", "12", "-bf", "2"],
}


def index_frame(index: int, height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB frame showing `index` as INDEX_BITS black/white blocks, least significant bit first."""
    columns = np.arange(width) * INDEX_BITS // width
    row = np.where((index >> columns) & 1, 255, 0).astype(np.uint8)
    return np.repeat(np.broadcast_to(row[None, :], (height, width))[..., None], 3, axis=2).copy()


def read_index(frame: np.ndarray) -> int:
    """The frame index drawn by `index_frame`, read back from the centre column of each bit block."""
    height, width = frame.shape[:2]
    centres = ((np.arange(INDEX_BITS) + 0.5) * width / INDEX_BITS).astype(int)
    brightness = frame[:, centres].astype(np.float64).mean(axis=(0, 2))
    return int(sum(1 << bit for bit, value in enumerate(brightness) if value > 127))


def read_indices(frames: np.ndarray) -> list[int]:
    """`read_index` of each frame of a (T, H, W, 3) array."""
    return [read_index(frame) for frame in frames]


def write_frames(path: Path, frames: Iterable[np.ndarray], width: int, height: int, fps: float = 25.0,
                 codec: str = "h264", extra_args: Iterable[str] = ()) -> Path:
    """Encode RGB frames with ffmpeg (raw frames piped in) into `path`; the container follows the suffix."""
    command = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", str(fps), "-i", "-", *CODEC_ARGS[codec], *extra_args, str(path)]
    raw = b"".join(np.ascontiguousarray(frame, dtype=np.uint8).tobytes() for frame in frames)
    result = subprocess.run(command, input=raw, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {result.stderr.decode(errors='replace').strip()}")
    return path


def write_indexed_video(path: Path, num_frames: int, width: int = 64, height: int = 48, fps: float = 25.0,
                        codec: str = "h264", extra_args: Iterable[str] = ()) -> Path:
    """A real encoded video whose frame i shows index i (see `index_frame`)."""
    frames = (index_frame(index, height, width) for index in range(num_frames))
    return write_frames(path, frames, width, height, fps, codec, extra_args)


def random_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB frames (T, H, W, 3) uint8: blurred noise, so that resizing has real structure to get right."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(num_frames, max(2, height // 4), max(2, width // 4), 3)).astype(np.float64)
    rows = np.linspace(0, coarse.shape[1] - 1, height)
    cols = np.linspace(0, coarse.shape[2] - 1, width)
    smooth = coarse[:, np.round(rows).astype(int)][:, :, np.round(cols).astype(int)]
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class UdpPublisher:
    """An ffmpeg process publishing a synthetic MPEG-TS (H.264) stream in real time to udp://127.0.0.1:port.

    `start()` and `kill()` may be called repeatedly to cut the stream and bring it back, as a camera would.
    """

    def __init__(self, port: int, width: int = 64, height: int = 48, fps: int = 25, duration: float = 30.0):
        if shutil.which("ffmpeg") is None:
            raise RuntimeError("ffmpeg is not on PATH")
        self.port = port
        self.uri = f"udp://127.0.0.1:{port}"
        self._command = [
            "ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i",
            f"testsrc2=size={width}x{height}:rate={fps}:duration={duration}",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(max(1, fps // 5)),
            "-pix_fmt", "yuv420p", "-f", "mpegts", f"{self.uri}?pkt_size=1316",
        ]
        self._process: subprocess.Popen | None = None

    def start(self) -> UdpPublisher:
        self.kill()
        self._process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def __enter__(self) -> UdpPublisher:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.kill()


def wait_until(condition, timeout: float, interval: float = 0.02) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
