"""The consuming stages of the workers: thin adapters between a step of `pipeline.stream.steps` and `StageLoop`.

Each takes its name, topics and message type from `pipeline.stream.topology`; the step does the work, the adapter
adds batching settings, metrics and, for the sink, per-stream ordering. `build_stages` makes the stages of one
worker from the config; the modules with torch are imported only by the workers that need them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipeline.alerts import Alert, MqttSink
from pipeline.alerts.errors import AlertInputError
from pipeline.bus import Delivery
from pipeline.config import PipelineConfig
from pipeline.stream.messages import HealthMessage, Message, VerdictMessage
from pipeline.stream.reorder import ReorderBuffer, SeqJumpError
from pipeline.stream.steps import Rejected
from pipeline.stream.steps.record import HealthLog, SinkStep, verdict_record
from pipeline.stream.topology import StageSpec, stage, worker_stages
from workers.loop import Inbound, Outcome, Stage, outcomes_for
from workers.ops import PipelineMetrics

if TYPE_CHECKING:
    from pipeline.console.live import LiveConsole

logger = logging.getLogger(__name__)

__all__ = ["BatchStage", "HealthStage", "SinkStage", "build_stages"]


def _bind(target: Stage, spec: StageSpec) -> None:
    target.name, target.input_topic, target.input_type = spec.name, spec.input_topic, spec.input_type
    target.output_topic = spec.output_topic


class BatchStage(Stage):
    """A batch step (messages in, one message or `Rejected` out per input) on its stage of the topology."""

    def __init__(self, spec: StageSpec, step: Callable[[Sequence[Message]], Sequence[Message | Rejected | None]],
                 *, max_batch: int = 1, max_wait_s: float = 0.0):
        _bind(self, spec)
        self.run_step = step
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s

    def step(self, items: list[Inbound]) -> list[Outcome]:
        return outcomes_for(items, self.run_step([item.message for item in items]))

    def close(self) -> None:
        close = getattr(self.run_step, "close", None)
        if close is not None:
            close()


class SinkStage(Stage):
    """`SinkStep` on the verdicts, in order per stream (`ReorderBuffer`); a verdict whose seq jumps implausibly far
    ahead of its stream is dead-lettered. Nothing is published: the sink is the end of the flow."""

    max_batch = 64
    max_wait_s = 0.0

    def __init__(self, step: SinkStep, *, reorder_window_s: float = 2.0, max_seq_jump: int | None = 10_000,
                 flush_timeout_s: float = 30.0, metrics: PipelineMetrics | None = None, mqtt: MqttSink | None = None,
                 console: LiveConsole | None = None):
        _bind(self, stage("sink"))
        self.record = step
        self.mqtt = mqtt
        self.console = console
        self.buffer: ReorderBuffer[Inbound] = ReorderBuffer(reorder_window_s, max_jump=max_seq_jump)
        for stream_id, (seq, decoded_at) in step.positions.items():
            self.buffer.resume(stream_id, seq, decoded_at)
        self.flush_timeout_s = flush_timeout_s
        self.metrics = metrics

    def step(self, items: list[Inbound]) -> list[Outcome]:
        ready, outcomes = [], []
        for item in items:
            verdict = item.message
            held = self.buffer.held(verdict.stream_id, verdict.seq)
            if held is not None:
                if held.delivery.id != item.delivery.id:
                    outcomes.append(Outcome(item))
                continue
            try:
                ready += self.buffer.push(verdict.stream_id, verdict.seq, item, verdict.timestamps.get("decoder"))
            except SeqJumpError as error:  # dead-lettered (and logged) by the loop
                outcomes.append(Outcome(item, error=str(error)))
        return outcomes + self._record(ready)

    def poll(self) -> list[Outcome]:
        outcomes = self._record(self.buffer.expire())
        if self.metrics is not None and self.record.webhooks is not None:
            stats = self.record.webhooks.stats
            self.metrics.webhook_pending.set(stats.pending)
            self.metrics.webhook_delivered.set(stats.delivered)
            self.metrics.webhook_dead_lettered.set(stats.dead_lettered)
        if self.metrics is not None and self.mqtt is not None:
            mqtt = self.mqtt.stats
            self.metrics.mqtt_up.set(int(mqtt.connected))
            self.metrics.mqtt_queued.set(mqtt.queued + mqtt.in_flight)
            self.metrics.mqtt_published.set(mqtt.published)
            self.metrics.mqtt_dropped.set(mqtt.dropped)
        return outcomes

    def drain(self) -> list[Outcome]:
        return self._record(self.buffer.drain())

    def held(self) -> list[Delivery]:
        return [item.delivery for item in self.buffer.items()]

    def close(self) -> None:
        self.record.close(self.flush_timeout_s)
        if self.mqtt is not None:
            self.mqtt.close()
        if self.console is not None:
            self.console.close()

    def _record(self, items: list[Inbound]) -> list[Outcome]:
        late_before = self.buffer.late
        outcomes = []
        with self.record.group_commit():  # the outcomes are acknowledged after the batch is on disk
            for item in items:
                try:
                    self.record(item.message)
                except AlertInputError as error:
                    outcomes.append(Outcome(item, error=str(error)))
                else:
                    outcomes.append(Outcome(item))
        if self.metrics is not None and self.buffer.late > late_before:
            self.metrics.late_verdicts.inc(self.buffer.late - late_before)
        return outcomes


class HealthStage(Stage):
    """Stream health events: `HealthLog`, the ``clipwatch_stream_up`` gauge, and the console's camera states."""

    max_batch = 64

    def __init__(self, log: HealthLog, metrics: PipelineMetrics | None = None, console: LiveConsole | None = None):
        _bind(self, stage("health"))
        self.log = log
        self.metrics = metrics
        self.console = console

    def step(self, items: list[Inbound]) -> list[Outcome]:
        with self.log.group_commit():  # acknowledged after the batch is on disk
            for item in items:
                event: HealthMessage = item.message
                self.log(event)
                if self.metrics is not None:
                    self.metrics.stream_up.labels(event.stream_id).set(1 if event.state == "up" else 0)
                if self.console is not None:
                    self.console.health({"stream_id": event.stream_id, "state": event.state,
                                         "detail": event.detail, "time": event.time})
        return [Outcome(item) for item in items]

    def close(self) -> None:
        self.log.close()


def sink_metrics(metrics: PipelineMetrics, on_alert: Callable[[Alert], None] | None = None,
                 mqtt: MqttSink | None = None, console: LiveConsole | None = None):
    """The (on_alert, on_verdict) callbacks of a sink step that count alerts, verdicts and end-to-end latency, and
    feed the MQTT sink and the console when there are."""

    def alerted(alert: Alert) -> None:
        metrics.alerts.labels(alert.kind).inc()
        if mqtt is not None:
            mqtt.submit(alert)
        if console is not None:
            console.alert(alert)
        if on_alert is not None:
            on_alert(alert)

    def recorded(verdict: VerdictMessage) -> None:
        metrics.verdicts.labels(verdict.verdict).inc()
        if mqtt is not None:
            mqtt.observe(verdict.stream_id, verdict.verdict)
        if console is not None:
            console.verdict(verdict_record(verdict))
        started = verdict.timestamps.get("decoder")
        if started is not None:
            metrics.end_to_end_seconds.observe(max(0.0, time.time() - started))

    return alerted, recorded


def _classifier(spec: StageSpec, config: PipelineConfig, metrics: PipelineMetrics, on_alert, console=None) -> Stage:
    import torch

    from pipeline.detect import Detector
    from pipeline.models.device import resolve_device
    from pipeline.stream.steps.classify import ClassifierStep

    settings = config.classifier
    device = resolve_device(settings.device, source="classifier.device")  # no CUDA here: one line, at start
    if settings.threads:
        torch.set_num_threads(settings.threads)
    detector = Detector.load(config.bundle, device=device, precision=settings.precision)
    thumbnail_size = config.thumbnail_size()
    if settings.thumbnail_size and not thumbnail_size:
        logger.info("classifier: no thumbnails (alerts.thumbnails_dir is unset, so nothing would keep them)")
    step = ClassifierStep.from_detector(detector, device=device, thumbnail_size=thumbnail_size,
                                        thumbnail_quality=settings.thumbnail_quality,
                                        scene=config.camera_directory().enabled)
    logger.info("classifier: model %s (%s), layers %s, batches of up to %d clips within %d ms", step.model_id,
                detector.precision, ", ".join(step.layers), settings.max_batch, settings.max_wait_ms)
    return BatchStage(spec, step, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000)


def _density(spec: StageSpec, config: PipelineConfig, metrics: PipelineMetrics, on_alert, console=None) -> Stage:
    from pipeline.detect import DetectorBundle
    from pipeline.stream.steps.score import DensityStep

    settings = config.density
    cameras = config.camera_directory()
    step = DensityStep(DetectorBundle.load(config.bundle), settings.alpha, cameras)
    logger.info("density: layers %s, false-alarm rate %g", ", ".join(step.bundle.layers), step.alpha)
    if step.cameras is not None:
        default = cameras.default
        logger.info("density: per-camera normal models (%s by default; warm-up %d clips, %d kept, %.0f %% of the "
                    "rate), %d camera(s) configured", "on" if default.enabled else "off", default.warmup_clips,
                    default.memory_clips, 100 * default.share,
                    sum(one.enabled for one in cameras.cameras.values()))
    return BatchStage(spec, step, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000)


def _sink(spec: StageSpec, config: PipelineConfig, metrics: PipelineMetrics, on_alert, console=None) -> Stage:
    alerts = config.alerts
    mqtt = MqttSink(alerts.mqtt) if alerts.mqtt is not None else None
    alerted, recorded = sink_metrics(metrics, on_alert, mqtt, console)
    step = SinkStep.from_config(alerts, config.webhook_config(), on_alert=alerted, on_verdict=recorded)
    flush = alerts.webhooks.flush_timeout_s if alerts.webhooks is not None else 0.0
    return SinkStage(step, reorder_window_s=alerts.reorder_window_s, max_seq_jump=alerts.max_seq_jump,
                     flush_timeout_s=flush, metrics=metrics, mqtt=mqtt, console=console)


def _health(spec: StageSpec, config: PipelineConfig, metrics: PipelineMetrics, on_alert, console=None) -> Stage:
    return HealthStage(HealthLog(config.alerts.health_jsonl), metrics, console)


FACTORIES = {"classifier": _classifier, "density": _density, "sink": _sink, "health": _health}


def build_stages(worker: str, config: PipelineConfig, metrics: PipelineMetrics,
                 on_alert: Callable[[Alert], None] | None = None) -> list[Stage]:
    """The consuming stages that worker `worker` runs (the topology says which), built from the config; the sink's
    worker also serves the console when the config has one (the sink stage closes it)."""
    specs = [spec for spec in worker_stages(worker) if spec.input_topic is not None]
    console = None
    if config.console is not None and any(spec.name == "sink" for spec in specs):
        from pipeline.console.live import LiveConsole

        console = LiveConsole.from_config(config)
    try:
        return [FACTORIES[spec.name](spec, config, metrics, on_alert, console) for spec in specs]
    except BaseException:
        if console is not None:
            console.close()
        raise
