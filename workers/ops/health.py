"""Health of a process: the `HealthBoard` of its components and the /healthz + /metrics HTTP server.

`/healthz` answers 200 while every component is well, 503 (status "degraded") otherwise, naming each one: the
stage loops (they beat while they work), the bus (reachable, data kept), each camera (up, or its file ended),
the webhooks (deliveries not failing). With a token, both endpoints require it as a bearer token.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from workers.ops.metrics import PipelineMetrics

logger = logging.getLogger(__name__)


class HealthBoard:
    """Health of a process's components, three kinds:

    - loops `beat` while they work and say when they `finished` cleanly or `failed`;
    - states are `set` by whoever knows them (a camera: None while up, else what is wrong);
    - probes are functions `watch`ed here and asked at each snapshot (the bus: None while well).
    """

    def __init__(self, stale_after_s: float = 60.0):
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self._finished: set[str] = set()
        self._failed: dict[str, str] = {}
        self._states: dict[str, str | None] = {}
        self._probes: dict[str, Callable[[], str | None]] = {}

    def beat(self, name: str) -> None:
        with self._lock:
            self._beats[name] = time.monotonic()

    def finished(self, name: str) -> None:
        with self._lock:
            self._finished.add(name)

    def failed(self, name: str, reason: str) -> None:
        with self._lock:
            self._beats.setdefault(name, time.monotonic())
            self._failed[name] = reason

    def set(self, name: str, problem: str | None) -> None:
        """Component `name` is well (None) or has `problem` (one line)."""
        with self._lock:
            self._states[name] = problem

    def forget(self, name: str) -> None:
        """Component `name` is gone (a camera removed from the sources): no longer reported."""
        with self._lock:
            self._states.pop(name, None)

    def watch(self, name: str, probe: Callable[[], str | None]) -> None:
        """Ask `probe()` at each snapshot: None while component `name` is well, else the problem."""
        with self._lock:
            self._probes[name] = probe

    def snapshot(self) -> tuple[bool, dict[str, str]]:
        """(healthy, {component: "ok" | "finished" | "stale (N s)" | "failed: reason" | "degraded: problem"})."""
        now = time.monotonic()
        with self._lock:
            states = {}
            for name, beat in self._beats.items():
                if name in self._failed:
                    states[name] = f"failed: {self._failed[name]}"
                elif name in self._finished:
                    states[name] = "finished"
                elif now - beat > self.stale_after_s:
                    states[name] = f"stale ({now - beat:.0f} s)"
                else:
                    states[name] = "ok"
            for name, problem in self._states.items():
                states[name] = "ok" if problem is None else f"degraded: {problem}"
            probes = dict(self._probes)
        for name, probe in probes.items():
            try:
                problem = probe()
            except Exception as error:  # a probe that breaks is itself a problem to report, not to crash on
                problem = f"health probe failed: {error}"
            states[name] = "ok" if problem is None else f"degraded: {problem}"
        return all(state in ("ok", "finished") for state in states.values()), states


class OpsServer:
    """HTTP on `host:port` (0: ephemeral): GET /healthz (JSON, 200 or 503) and GET /metrics (Prometheus text)."""

    def __init__(self, host: str, port: int, metrics: PipelineMetrics, board: HealthBoard, name: str,
                 token: str | None = None):
        self._httpd = ThreadingHTTPServer((host, port), _handler(metrics.render, board, name, token))
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"ops-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> OpsServer:
        self._thread.start()
        logger.info("ops: serving /healthz and /metrics on %s", self.url, extra={"ops_port": self.port})
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(render: Callable[[], bytes], board: HealthBoard, name: str,
             token: str | None) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            given = self.headers.get("Authorization", "").encode()
            if expected is not None and not hmac.compare_digest(given, expected):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="clipwatch"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path == "/metrics":
                self._send(200, render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                healthy, components = board.snapshot()
                body = {"status": "ok" if healthy else "degraded", "worker": name, "components": components}
                self._send(200 if healthy else 503, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"not found: try /healthz or /metrics\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
