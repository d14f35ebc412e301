"""Prometheus metrics: one `PipelineMetrics` registry per process.

Each stage reports through its `StageMetrics` view (the ``stage`` label), so the in-process pipeline (every stage,
one port) and separate workers (one stage each) export the same series.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.mqtt_up = Gauge("clipwatch_mqtt_up", "1 while the MQTT broker is connected", registry=reg)
        self.mqtt_queued = Gauge("clipwatch_mqtt_queued", "MQTT messages waiting for the broker (queued or in flight)",
                                 registry=reg)
        self.mqtt_published = Gauge("clipwatch_mqtt_published", "MQTT messages the broker acknowledged", registry=reg)
        self.mqtt_dropped = Gauge("clipwatch_mqtt_dropped", "MQTT messages dropped from a full queue", registry=reg)
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
