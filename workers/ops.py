"""Operations around the workers: Prometheus metrics, the /healthz + /metrics HTTP server, logs, signals.

One `PipelineMetrics` registry per process; each stage reports through its `StageMetrics` view (the ``stage``
label), so the in-process pipeline (four stages, one port) and separate workers (one stage each) export the same
series. `/healthz` answers 200 while every component is well, 503 (status "degraded") otherwise, naming each one:
the stage loops (they beat while they work), the bus (reachable, data kept), each camera (up, or its file ended),
the webhooks (deliveries not failing). With ``ops.token_env`` set, both endpoints require that bearer token.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


class PipelineMetrics:
    """Every clipwatch metric, in one registry (per process)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        stage, reg = ["stage"], self.registry
        self.messages_in = Counter("clipwatch_messages_in", "Deliveries received by a stage", stage, registry=reg)
        self.messages_out = Counter("clipwatch_messages_out", "Messages a stage published", stage, registry=reg)
        self.duplicates = Counter("clipwatch_duplicates", "Redelivered clip keys a stage dropped", stage, registry=reg)
        self.dead_letters = Counter("clipwatch_dead_letters", "Inputs a stage dead-lettered", stage, registry=reg)
        self.step_errors = Counter("clipwatch_step_errors", "Batches whose step raised", stage, registry=reg)
        self.step_seconds = Histogram("clipwatch_step_seconds", "Time of one step (one batch)", stage,
                                      buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram("clipwatch_batch_size", "Inputs per step", stage, buckets=BATCH_BUCKETS,
                                    registry=reg)
        self.queue_lag = Gauge("clipwatch_queue_lag", "Input entries not yet acknowledged by the stage's group",
                               stage, registry=reg)
        self.backpressure_seconds = Counter("clipwatch_backpressure_seconds",
                                            "Time spent blocked on publish (downstream full)", stage, registry=reg)
        self.clips = Counter("clipwatch_clips_published", "Clips the decoder published", ["stream"], registry=reg)
        self.source_errors = Counter("clipwatch_source_errors", "Sources or files skipped as unusable",
                                     registry=reg)
        self.stream_up = Gauge("clipwatch_stream_up", "1 while a stream is up, 0 otherwise", ["stream"],
                               registry=reg)
        self.verdicts = Counter("clipwatch_verdicts", "Verdicts recorded by the sink", ["verdict"], registry=reg)
        self.alerts = Counter("clipwatch_alerts", "Alerts raised", ["kind"], registry=reg)
        self.late_verdicts = Counter("clipwatch_late_verdicts",
                                     "Verdicts that reached the sink after a later clip of their stream", registry=reg)
        self.end_to_end_seconds = Histogram("clipwatch_end_to_end_seconds", "Decoder publish to sink record",
                                            buckets=LATENCY_BUCKETS, registry=reg)
        self.webhook_pending = Gauge("clipwatch_webhook_pending", "Webhook deliveries not yet final", registry=reg)
        self.webhook_delivered = Gauge("clipwatch_webhook_delivered", "Webhook deliveries that succeeded",
                                       registry=reg)
        self.webhook_dead_lettered = Gauge("clipwatch_webhook_dead_lettered", "Webhook deliveries given up",
                                           registry=reg)
        self.bus_up = Gauge("clipwatch_bus_up", "1 while the bus answers and has kept its data", registry=reg)
        self.bus_resets = Gauge("clipwatch_bus_resets", "Times the bus server was seen to come back without its data",
                                registry=reg)
        self.publish_stalls = Counter("clipwatch_publish_stalls",
                                      "Publishes that waited on a full topic whose consumers held nothing",
                                      ["stage"], registry=reg)

    def watch_bus(self, bus: object) -> None:
        """Export the bus's health and reset count (read at every scrape)."""
        health = getattr(bus, "health", lambda: None)
        self.bus_up.set_function(lambda: 0.0 if health() else 1.0)
        self.bus_resets.set_function(lambda: float(getattr(bus, "resets", 0)))

    def stage(self, name: str) -> StageMetrics:
        return StageMetrics(
            messages_in=self.messages_in.labels(name), messages_out=self.messages_out.labels(name),
            duplicates=self.duplicates.labels(name), dead_letters=self.dead_letters.labels(name),
            step_errors=self.step_errors.labels(name), step_seconds=self.step_seconds.labels(name),
            batch_size=self.batch_size.labels(name), queue_lag=self.queue_lag.labels(name),
            backpressure_seconds=self.backpressure_seconds.labels(name),
            publish_stalls=self.publish_stalls.labels(name))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class StageMetrics:
    """The metrics of one stage (children of the labelled `PipelineMetrics` series)."""

    messages_in: Counter
    messages_out: Counter
    duplicates: Counter
    dead_letters: Counter
    step_errors: Counter
    step_seconds: Histogram
    batch_size: Histogram
    queue_lag: Gauge
    backpressure_seconds: Counter
    publish_stalls: Counter


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus any `extra` fields."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        body = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        body.update({key: value for key, value in vars(record).items() if key not in self._standard})
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Send logs to stderr as text lines or JSON lines (replacing earlier handlers of the root logger)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


@contextlib.contextmanager
def handle_signals(stop: threading.Event) -> Iterator[None]:
    """While inside: SIGTERM / SIGINT set `stop` (graceful: finish the batch in flight); a second one exits at once.

    The previous handlers come back on exit. Outside the main thread (where Python cannot set handlers) it does
    nothing, and `stop` is the caller's to set.
    """

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        logger.info("%s: finishing the batch in flight, then exiting", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
