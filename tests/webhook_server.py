"""A real HTTP webhook receiver for tests: listens on 127.0.0.1 (a free port) in a thread and records every request.

    with WebhookServer(secret="s3cret") as server:
        server.plan(Reply.fail(500), times=3)        # the next 3 requests get HTTP 500 ...
        server.plan(Reply.hang(1.0))                 # ... then one is held 1 s and dropped unanswered
        # every later request gets `server.default` (Reply.accept() unless changed)
        post_things_to(server.url)
        server.wait_for(lambda reqs: len(server.accepted()) == 4, timeout=5)

A reply decides per request: `Reply.accept()` (200), `Reply.fail(status)`, or `Reply.hang(seconds)` (hold the
connection open past a client's timeout, then close it without any response). With a `secret`, each request's
``X-Clipwatch-Signature`` is checked with `pipeline.alerts.verify_signature`; a bad one is answered 401 and recorded
as ``signature_valid=False`` (planned replies are not consumed by it).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline.alerts import verify_signature
from pipeline.alerts.signing import SIGNATURE_HEADER


@dataclass(frozen=True)
class Reply:
    """How the server answers one request."""

    status: int = 200
    hang_s: float = 0.0
    retry_after: int | None = None

    @classmethod
    def accept(cls) -> Reply:
        return cls(200)

    @classmethod
    def fail(cls, status: int = 500, retry_after: int | None = None) -> Reply:
        return cls(status, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Read the request, wait `seconds` (or until the server stops), close the connection without answering."""
        return cls(0, hang_s=seconds)


@dataclass
class RecordedRequest:
    """One received request. `status` is what was answered (None: the connection was dropped unanswered)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    signature_valid: bool | None
    status: int | None = field(default=None)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class WebhookServer:
    """The receiver. `url` is ``http://127.0.0.1:<port>/hook``; any path is accepted and recorded."""

    def __init__(self, secret: str | bytes | None = None, path: str = "/hook"):
        self.secret = secret
        self.default = Reply.accept()
        self._plan: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-server", daemon=True
        )
        self._thread.start()

    def plan(self, reply: Reply, times: int = 1) -> None:
        """Answer the next `times` requests (after those already planned) with `reply`."""
        with self._changed:
            self._plan.extend([reply] * times)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._changed:
            return list(self._requests)

    def accepted(self) -> list[RecordedRequest]:
        """The requests answered with a 2xx status, in arrival order."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    def wait_for(
        self, condition: Callable[[list[RecordedRequest]], bool], timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Wait until `condition(requests)` holds, re-checked at each request and each answer.

        Raises AssertionError when `timeout` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(list(self._requests)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"webhook server: condition not met within {timeout} s ({len(self._requests)} requests)"
                    )
                self._changed.wait(remaining)
            return list(self._requests)

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> WebhookServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _receive(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        signature = handler.headers.get(SIGNATURE_HEADER)
        valid = None if self.secret is None else verify_signature(body, signature, self.secret)
        with self._changed:
            reply = Reply(401) if valid is False else (self._plan.popleft() if self._plan else self.default)
            record = RecordedRequest(
                handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()},
                body, time.time(), valid,
            )
            self._requests.append(record)
            self._changed.notify_all()
        if reply.hang_s:
            self._stopping.wait(reply.hang_s)
            handler.close_connection = True
        else:
            _respond(handler, reply)
        with self._changed:
            record.status = reply.status or None
            self._changed.notify_all()


def _respond(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    payload = b'{"ok":true}' if 200 <= reply.status < 300 else b'{"ok":false}'
    try:
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        if reply.retry_after is not None:
            handler.send_header("Retry-After", str(reply.retry_after))
        handler.end_headers()
        handler.wfile.write(payload)
    except OSError:
        handler.close_connection = True


def _handler_for(server: WebhookServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            server._receive(self)

        do_PUT = do_GET = do_POST

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def refused_url(path: str = "/hook") -> str:
    """An http URL on 127.0.0.1 where nothing listens (a port just bound and released), so connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
