"""Connections behind StreamReader: PyAV for URIs (exact timestamps, per-read timeouts), OpenCV for cameras.

A backend opens one connection and returns frames one at a time: `read()` gives `(rgb, pts)`, None when no frame
arrived within the read timeout (a stall), raises EndOfStream at a clean end, and raises any other exception when
the connection broke. The reader thread owns the backend; nothing here is shared between threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# OpenCV's own FFmpeg logs decoder errors (normal while a stream restarts) to stderr unless told otherwise; this
# must be set before OpenCV first opens a capture. An explicit setting by the user wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402

_DEFAULT_OPTIONS = {
    # RTP over the RTSP TCP connection: no packet loss behind NAT or on busy links.
    "rtsp": {"rtsp_transport": "tcp"},
    "rtsps": {"rtsp_transport": "tcp"},
    # A large receive buffer that never aborts on overrun: a slow consumer loses packets, not the connection.
    "udp": {"fifo_size": "1000000", "overrun_nonfatal": "1"},
}


class EndOfStream(Exception):
    """The source ended cleanly (end of file, or the server closed the stream)."""


def local_path(uri: str) -> str | None:
    """The file path of a `file://` URI, or None for any other URI."""
    parts = urlsplit(uri)
    return unquote(parts.path) if parts.scheme == "file" else None


class PyAVConnection:
    """One FFmpeg connection to a URI, decoding the first video stream."""

    name = "pyav"

    def __init__(self, uri: str, options: dict[str, str], open_timeout: float, read_timeout: float):
        scheme = urlsplit(uri).scheme
        self._target = local_path(uri) or uri
        self._options = {**_DEFAULT_OPTIONS.get(scheme, {}), **options}
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._container = None
        self._frames: Iterator[av.VideoFrame | None] | None = None
        self._rgb = VideoReformatter()  # one converter for the connection: PyAV's per-frame default rebuilds it

    def open(self) -> None:
        self._container = av.open(self._target, options=self._options,
                                  timeout=(self._open_timeout, self._read_timeout))
        if not self._container.streams.video:
            raise ConnectionError("no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._frames = self._decode(stream)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            raise EndOfStream from None
        except av.ExitError:
            return None
        if frame is None:
            return None
        return self._rgb.reformat(frame, format="rgb24").to_ndarray(), frame.time

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None

    def _decode(self, stream) -> Iterator[av.VideoFrame | None]:
        """Decoded frames, with None whenever `read_timeout` passes without one while packets still arrive."""
        last_frame = time.monotonic()
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                frames = []
            for frame in frames:
                last_frame = time.monotonic()
                yield frame
            if time.monotonic() - last_frame > self._read_timeout:
                last_frame = time.monotonic()
                yield None


class OpenCVConnection:
    """One OpenCV VideoCapture: a camera index (V4L2 and friends) or a URI through OpenCV's FFmpeg backend."""

    name = "opencv"

    def __init__(self, source: str | int, open_timeout: float, read_timeout: float):
        self._source = source
        self._is_file = isinstance(source, str) and local_path(source) is not None
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._capture: cv2.VideoCapture | None = None
        self._timed_out_at = float("-inf")

    def open(self) -> None:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        if isinstance(self._source, int):
            capture = cv2.VideoCapture(self._source)
        else:
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self._open_timeout * 1000),
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self._read_timeout * 1000)]
            capture = cv2.VideoCapture(local_path(self._source) or self._source, cv2.CAP_FFMPEG, timeouts)
        if not capture.isOpened():
            capture.release()
            raise ConnectionError("OpenCV could not open it")
        self._capture = capture

    def read(self) -> tuple[np.ndarray, float | None] | None:
        started = time.monotonic()
        ok, image = self._capture.read()
        now = time.monotonic()
        if now - started >= 0.9 * self._read_timeout:
            self._timed_out_at = now
        if ok:
            pts = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), pts
        if self._is_file:
            raise EndOfStream
        # OpenCV reports a timeout and a broken connection alike, and after a timeout it first hands out the frames
        # still in the decoder: a failure shortly after a read that hit the timeout is a stall.
        if now - self._timed_out_at < self._read_timeout:
            return None
        raise ConnectionError("OpenCV read failed")

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture = None
