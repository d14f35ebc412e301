"""StreamReader: frames of a live source (RTSP, HTTP, UDP, file:// URI or camera) that survive the source failing.

A background thread owns the connection. It decodes frames into a bounded queue (dropping the oldest when the
consumer falls behind, so the stream is never throttled), notices stalls (no frame for `stall_timeout` seconds),
reconnects with exponential back-off, and reports every health change as a StreamEvent. The consumer iterates
frames; iteration ends after the ENDED event (end of a file, `close()`, or reconnects given up).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from pipeline.video.errors import VideoError, describe_source, error_reason
from pipeline.video.events import EventCallback, Frame, Health, HealthReporter, StreamEvent
from pipeline.video.live_backends import EndOfStream, OpenCVConnection, PyAVConnection, local_path

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "tcp", "srt", "file"})
_END = object()


def camera_index(source: object) -> int | None:
    """The camera index of `source` (an int, or a string of digits such as "0"), or None."""
    if isinstance(source, int) and not isinstance(source, bool):
        return source
    if isinstance(source, str) and source.isdigit():
        return int(source)
    return None


class StreamReader:
    """Frames of one live source, with reconnection, stall detection and health events.

    Args:
        source: a URI (rtsp://, rtsps://, rtmp://, http(s)://, udp://, rtp://, tcp://, srt://, file://) or a camera
            index (0 or "0").
        stream_id: name used in events and clip keys; defaults to the URI without its password, or "camera<N>".
        backend: "pyav" (URIs), "opencv" (URIs or cameras) or "auto" (OpenCV for cameras, PyAV otherwise).
        open_timeout: seconds allowed to connect and find the video stream.
        stall_timeout: seconds without a frame after which the stream counts as stalled and is reconnected.
        reconnect: reconnect after failures and after the end of a live stream (a file:// source always ends).
        max_reconnects: reconnect attempts in a row before giving up (None: never give up).
        backoff_initial, backoff_factor, backoff_max: delay before attempt n is
            `min(backoff_max, backoff_initial * backoff_factor ** (n - 1))`, then jittered by ±`backoff_jitter`.
        buffer_frames: frames queued for the consumer.
        drop_frames: when the queue is full, drop the oldest frame (counted in `dropped_frames`) rather than wait
            for the consumer; default True for live sources, False for file:// (which loses nothing by waiting).
        options: FFmpeg options for the PyAV backend (e.g. {"rtsp_transport": "udp"}); override the defaults.
        on_event: called with each StreamEvent, from the reader thread.
    """

    def __init__(self, source: str | int, *, stream_id: str | None = None, backend: str = "auto",
                 open_timeout: float = 10.0, stall_timeout: float = 5.0, reconnect: bool = True,
                 max_reconnects: int | None = None, backoff_initial: float = 0.5, backoff_factor: float = 2.0,
                 backoff_max: float = 30.0, backoff_jitter: float = 0.1, buffer_frames: int = 64,
                 drop_frames: bool | None = None, options: dict[str, str] | None = None,
                 on_event: EventCallback | None = None):
        camera = camera_index(source)
        self.source = camera if camera is not None else str(source)
        if camera is None:
            scheme = urlsplit(self.source).scheme
            if scheme not in LIVE_SCHEMES:
                raise VideoError(source, f"unsupported stream scheme '{scheme}' (use one of {sorted(LIVE_SCHEMES)})")
        if backend not in ("auto", "pyav", "opencv"):
            raise ValueError(f"StreamReader: backend must be 'auto', 'pyav' or 'opencv', got {backend!r}")
        if camera is not None and backend == "pyav":
            raise VideoError(source, "cameras are read with the 'opencv' backend")
        if min(open_timeout, stall_timeout, backoff_initial) <= 0 or backoff_factor < 1 or buffer_frames < 1:
            raise ValueError("StreamReader: timeouts and back-off must be positive, backoff_factor >= 1")
        self.stream_id = stream_id or (f"camera{camera}" if camera is not None else describe_source(self.source))
        self.backend = "opencv" if camera is not None or backend == "opencv" else "pyav"
        self.is_file = camera is None and local_path(self.source) is not None
        self.open_timeout = open_timeout
        self.stall_timeout = stall_timeout
        self.reconnect = reconnect and not self.is_file
        self.drop_frames = not self.is_file if drop_frames is None else drop_frames
        self.max_reconnects = max_reconnects
        self.backoff = (backoff_initial, backoff_factor, backoff_max, backoff_jitter)
        self.options = dict(options or {})
        self.dropped_frames = 0
        self.frames_decoded = 0
        self._reporter = HealthReporter(self.stream_id, on_event)
        self._queue: queue.Queue = queue.Queue(maxsize=buffer_frames)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def health(self) -> Health | None:
        """The latest health state (None before the first connection attempt ends)."""
        return self._reporter.health

    @property
    def events(self) -> list[StreamEvent]:
        """Recent health events, oldest first."""
        return self._reporter.events

    def start(self) -> StreamReader:
        """Start the reader thread (idempotent; iterating starts it too)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"stream-{self.stream_id}", daemon=True)
                self._thread.start()
        return self

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None once the stream has ended; raises TimeoutError after `timeout` seconds."""
        self.start()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.stream_id}: no frame within {timeout} s") from None
        if item is _END:
            self._queue.put(_END)
            return None
        return item

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def close(self, timeout: float | None = None) -> None:
        """Stop reading; waits up to `timeout` seconds (default: one read timeout and a second) for the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.stall_timeout + 1.0 if timeout is None else timeout)

    def __enter__(self) -> StreamReader:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self) -> None:
        ending = "closed"
        try:
            ending = self._serve()
        except Exception as error:  # the thread must always end the stream, whatever broke
            ending = f"reader failed: {error_reason(error)}"
        finally:
            self._reporter.emit(Health.ENDED, ending)
            self._put(_END)

    def _serve(self) -> str:
        """Connect, read, reconnect until the stream ends; returns why it ended."""
        attempt = 0
        segment = -1
        while not self._stop.is_set():
            connection = self._connection()
            try:
                connection.open()
            except Exception as error:
                reason = f"cannot connect: {error_reason(error)}"
            else:
                segment += 1
                attempt, reason = self._pump(connection, segment, attempt)
            finally:
                connection.close()
            if self._stop.is_set():
                break
            if reason is None:
                return "end of stream"
            if self._reporter.health not in (Health.DOWN, Health.RECONNECTING):
                self._reporter.emit(Health.DOWN, reason)
            if not self.reconnect:
                return reason
            if self.max_reconnects is not None and attempt >= self.max_reconnects:
                return f"gave up after {attempt} reconnect attempts ({reason})"
            attempt += 1
            delay = self._delay(attempt)
            self._reporter.emit(Health.RECONNECTING, reason, attempt=attempt, delay=delay)
            if self._stop.wait(delay):
                break
        return "closed"

    def _pump(self, connection, segment: int, attempt: int) -> tuple[int, str | None]:
        """Move frames from an open connection to the queue; returns (attempts, why it stopped or None at EOF)."""
        up = False
        while not self._stop.is_set():
            try:
                result = connection.read()
            except EndOfStream:
                return attempt, ("end of stream" if self.reconnect else None)
            except Exception as error:
                return attempt, f"connection lost: {error_reason(error)}"
            if result is None:
                if up:
                    self._reporter.emit(Health.STALLED, f"no frame for {self.stall_timeout:g} s")
                    return attempt, "stalled"
                return attempt, f"connected but no frame within {self.stall_timeout:g} s"
            if not up:
                up, attempt = True, 0
                self._reporter.emit(Health.UP, f"segment {segment}")
            image, pts = result
            index = self.frames_decoded
            self.frames_decoded += 1
            self._put(Frame(image, index, float("nan") if pts is None else float(pts), time.time(), segment))
        return attempt, None

    def _connection(self) -> PyAVConnection | OpenCVConnection:
        if self.backend == "opencv":
            return OpenCVConnection(self.source, self.open_timeout, self.stall_timeout)
        return PyAVConnection(self.source, self.options, self.open_timeout, self.stall_timeout)

    def _delay(self, attempt: int) -> float:
        initial, factor, maximum, jitter = self.backoff
        delay = min(maximum, initial * factor ** (attempt - 1))
        return delay * (1.0 + random.uniform(-jitter, jitter))

    def _put(self, item: object) -> None:
        """Queue an item; when full, drop the oldest frame (live) or wait for the consumer (file://)."""
        waiting = not self.drop_frames
        while True:
            try:
                if waiting:
                    self._queue.put(item, timeout=0.1)
                else:
                    self._queue.put_nowait(item)
                return
            except queue.Full:
                pass
            if waiting and not self._stop.is_set():
                continue
            if item is not _END and self._stop.is_set():
                return
            try:
                self._queue.get_nowait()
                self.dropped_frames += 1
            except queue.Empty:
                pass
