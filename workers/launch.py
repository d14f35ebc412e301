"""Start the pipeline: all stages in one process (`run_pipeline`), or one stage per process (`run_worker`).

Both build the same stages and loops from a `PipelineConfig`; only the bus differs (in-process queues or Redis
Streams, from ``bus.url``). Each process serves /healthz and /metrics and stops gracefully on SIGTERM/SIGINT: the
decoder stops reading, each stage finishes its batch in flight, publishes, acknowledges, and the process exits 0.
SIGHUP makes the decoder re-read the config file's ``sources`` (other processes ignore it); in `run_pipeline` the
console, when configured, can add and remove cameras too (`camera_control`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pipeline.alerts import Alert
from pipeline.bus import Bus, BusRefused, open_bus
from pipeline.config import ConfigError, PipelineConfig
from pipeline.stream.steps.record import format_alert
from pipeline.stream.topology import STAGES, WORKERS
from workers.loop import Stage, StageLoop
from workers.ops import HealthBoard, OpsServer, PipelineMetrics, handle_signals
from workers.ops.progress import ProgressReporter
from workers.stages import build_stages

if TYPE_CHECKING:
    from pipeline.console.cameras import CameraControl
    from workers.decoder import DecoderWorker

logger = logging.getLogger(__name__)

DRAIN_TOPICS = tuple((spec.input_topic, spec.name) for spec in STAGES if spec.input_topic is not None)
"""(topic, group) of every consuming stage in flow order: a run has drained when each has acknowledged all."""


def open_config_bus(config: PipelineConfig) -> Bus:
    """The bus of ``config.bus``."""
    bus = config.bus
    options = dict(max_backlog=bus.max_backlog, visibility_timeout_ms=bus.visibility_timeout_ms,
                   max_deliveries=bus.max_deliveries, publish_timeout=bus.publish_timeout_s)
    if bus.url != "memory://":
        options.update(namespace=bus.namespace, reconnect_timeout=bus.reconnect_timeout_s,
                       reset_alarm_s=bus.reset_alarm_s)
    return open_bus(bus.url, **options)


def start_ops(config: PipelineConfig, name: str, port: int, metrics: PipelineMetrics, board: HealthBoard,
              bus: Bus) -> OpsServer:
    """The /healthz + /metrics server of worker `name`, watching `bus`; warns when it is open to the network."""
    token = config.ops.token()
    host = config.ops.host
    if token is None and not config.ops.is_loopback:
        logger.warning("ops: /healthz and /metrics on %s:%s are open to the network without a token; set "
                       "ops.token_env", host, port)
    metrics.watch_bus(bus)
    board.watch("bus", bus.health)
    return OpsServer(host, port, metrics, board, name, token=token).start()


def close_when_overdue(bus: Bus, stop: threading.Event, done: threading.Event, timeout_s: float) -> threading.Thread:
    """A thread that closes `bus` if `done` is not set `timeout_s` after `stop`: shutdown never outwaits an outage.

    Closing wakes every call waiting on the bus (a reconnect, a full topic) with `BusClosed`; what was not
    acknowledged is redelivered to the next worker.
    """

    def watch() -> None:
        while not stop.wait(0.2):
            if done.is_set():
                return
        if not done.wait(timeout_s):
            logger.warning("stopping: work in flight not finished after %.0f s (bus: %s); closing the bus",
                           timeout_s, bus.health() or "ok")
            bus.close()

    thread = threading.Thread(target=watch, name="stop-watch", daemon=True)
    thread.start()
    return thread


def stage_loop(stage: Stage, bus: Bus, config: PipelineConfig, *, stop: threading.Event, metrics: PipelineMetrics,
               board: HealthBoard) -> StageLoop:
    consumer = f"{stage.name}-{socket.gethostname()}-{os.getpid()}"
    return StageLoop(stage, bus, consumer=consumer, stop=stop, metrics=metrics.stage(stage.name), board=board,
                     dedupe_keys=config.bus.dedupe_keys, max_bytes=config.bus.max_bytes,
                     lag_interval_s=config.ops.lag_interval_s)


def alert_printer(out: TextIO) -> Callable[[Alert], None]:
    lock = threading.Lock()

    def show(alert: Alert) -> None:
        with lock:
            print(format_alert(alert), file=out, flush=True)

    return show


@dataclass
class RunSummary:
    """What one `run_pipeline` did: clips published per stream, inputs skipped (one line each), alerts raised."""

    published: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    alerts: int = 0
    seconds: float = 0.0
    stopped: bool = False


def run_pipeline(config: PipelineConfig, *, stop: threading.Event | None = None, out: TextIO | None = None,
                 drain_timeout_s: float | None = None, progress: TextIO | None = None,
                 progress_s: float = 10.0) -> RunSummary:
    """All four stages in this process, one thread each, until every file source is done and the bus drained.

    Live sources run until `stop` is set (SIGTERM/SIGINT when called from the main thread). Alerts are printed
    to `out` (stdout) as they fire when ``alerts.print`` is on; with `progress` (a stream such as stderr), a line
    of counts and throughput every `progress_s` seconds.
    """
    if not config.sources:
        raise ConfigError(f"{config.source_file}: sources: nothing to run (no sources configured)")
    stop, reload = stop or threading.Event(), threading.Event()
    with handle_signals(stop, reload):
        return _run_pipeline(config, stop, reload, out or sys.stdout, drain_timeout_s, progress, progress_s)


def _run_pipeline(config: PipelineConfig, stop: threading.Event, reload: threading.Event, out: TextIO,
                  drain_timeout_s: float | None, progress: TextIO | None, progress_s: float) -> RunSummary:
    started = time.monotonic()
    config.webhook_config()  # a missing webhook secret fails now, before any model is loaded
    metrics, board = PipelineMetrics(), HealthBoard()
    summary = RunSummary()
    bus = open_config_bus(config)
    printer = alert_printer(out) if config.alerts.print else None

    def on_alert(alert: Alert) -> None:
        summary.alerts += 1
        if printer is not None:
            printer(alert)

    stages_stop = threading.Event()
    stages = [stage for name in WORKERS for stage in build_stages(name, config, metrics, on_alert)]
    loops = [stage_loop(stage, bus, config, stop=stages_stop, metrics=metrics, board=board) for stage in stages]
    threads = [threading.Thread(target=loop.run, name=f"stage-{loop.stage.name}", daemon=True) for loop in loops]
    ops = start_ops(config, "run", config.ops.port_for("run"), metrics, board, bus)
    done = threading.Event()
    close_when_overdue(bus, stop, done, config.ops.stop_timeout_s)
    reporter = ProgressReporter(metrics, progress, progress_s).start() if progress is not None else None
    try:
        for thread in threads:
            thread.start()
        for topic, group in DRAIN_TOPICS:
            bus.ensure_group(topic, group)
        from workers.decoder import DecoderWorker

        decoder = DecoderWorker(config, bus, stop=stop, metrics=metrics, board=board, reload=reload)
        console = next((stage.console for stage in stages if getattr(stage, "console", None) is not None), None)
        if console is not None:
            console.serve_cameras(camera_control(decoder, config))
        report = decoder.run()
        summary.published, summary.skipped = report.published, report.skipped
        summary.stopped = stop.is_set()
        if not summary.stopped:
            _wait_drained(bus, stop, drain_timeout_s)
    finally:
        stages_stop.set()
        for thread in threads:
            thread.join()
        if reporter is not None:
            reporter.stop()
        done.set()
        ops.close()
        bus.close()
    summary.seconds = time.monotonic() - started
    return summary


def camera_control(decoder: DecoderWorker, config: PipelineConfig) -> CameraControl:
    """The console's hooks into `decoder` (``POST`` / ``DELETE /api/cameras``); relative paths resolve against the
    config file's folder, as the file's own do."""
    from pipeline.console.cameras import CameraControl

    base = config.source_path.parent if config.source_path is not None else Path.cwd()
    return CameraControl(add=decoder.add, remove=decoder.remove, base=base)


def _wait_drained(bus: Bus, stop: threading.Event, timeout_s: float | None) -> None:
    """Wait until every stage's group has acknowledged everything (or `stop`, or the timeout)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not stop.is_set():
        if all(bus.lag(topic, group) == 0 for topic, group in DRAIN_TOPICS):
            return
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("run: pipeline not drained after %.0f s; stopping anyway", timeout_s)
            return
        stop.wait(0.05)


def run_worker(name: str, config: PipelineConfig, *, stop: threading.Event | None = None,
               port: int | None = None) -> int:
    """One stage in this process over the configured bus, until SIGTERM/SIGINT (the decoder: until its files end).

    Returns the exit code: 0 after a clean stop; 1 for a decoder that lost the bus or whose every source failed.
    """
    if name not in WORKERS:
        raise ValueError(f"unknown worker {name!r}: expected one of {', '.join(WORKERS)}")
    stop, reload = stop or threading.Event(), threading.Event()
    with handle_signals(stop, reload if name == "decoder" else None):
        return _run_worker(name, config, stop, reload, port)


def _run_worker(name: str, config: PipelineConfig, stop: threading.Event, reload: threading.Event,
                port: int | None) -> int:
    metrics, board = PipelineMetrics(), HealthBoard()
    bus = open_config_bus(config)
    ops = start_ops(config, name, config.ops.port_for(name) if port is None else port, metrics, board, bus)
    done = threading.Event()
    close_when_overdue(bus, stop, done, config.ops.stop_timeout_s)
    try:
        if hasattr(bus, "ping"):
            bus.ping()
        if name == "decoder":
            from workers.decoder import DecoderWorker

            if not config.sources:
                raise ConfigError(f"{config.source_file}: sources: the decoder has no sources to read")
            report = DecoderWorker(config, bus, stop=stop, metrics=metrics, board=board, reload=reload).run()
            return 1 if report.failed or (report.skipped and not report.published) else 0
        printer = alert_printer(sys.stdout) if config.alerts.print else None
        loops = [stage_loop(stage, bus, config, stop=stop, metrics=metrics, board=board)
                 for stage in build_stages(name, config, metrics, printer)]
        threads = [threading.Thread(target=loop.run, name=f"stage-{loop.stage.name}") for loop in loops]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.2)
            if any(loop.refused for loop in loops):
                stop.set()
        return 1 if any(loop.refused for loop in loops) else 0
    except BusRefused as error:
        logger.error("%s: %s", name, error)
        return 1
    finally:
        done.set()
        ops.close()
        bus.close()
