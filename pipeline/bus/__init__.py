"""How stages talk: typed msgpack messages, and two transports with one contract.

    bus = open_bus("redis://cache:6379/0")        # or open_bus() for threads in one process
    bus.publish("clips", encode(clip_message), key=clip_message.key)
    for delivery in bus.consume("clips", group="classifier", consumer="gpu-0"):
        clip = decode(delivery.payload, expect=ClipMessage)  # MessageError → bus.dead_letter(delivery, str(error))
        bus.publish("embeddings", encode(step(clip)), key=clip.key)
        bus.ack("clips", "classifier", [delivery.id])          # only after the result is published

Delivery is at-least-once with redelivery of unacknowledged entries, dead letters past `max_deliveries`, and
back-pressure (publish blocks) instead of dropping; `pipeline.bus.base` spells out the contract.
"""

from pipeline.bus.base import (
                               BackpressureTimeout,
                               Bus,
                               BusClosed,
                               BusError,
                               BusRefused,
                               BusUnavailable,
                               DeadLetter,
                               Delivery,
                               dead_topic,
)
from pipeline.bus.factory import open_bus
from pipeline.bus.memory import InProcessBus
from pipeline.bus.messages import (
                               DEFAULT_MAX_BYTES,
                               MESSAGE_TYPES,
                               SCHEMA_VERSION,
                               AlertMessage,
                               ClipMessage,
                               EmbeddingMessage,
                               HealthMessage,
                               LayerFeatures,
                               Message,
                               MessageError,
                               VerdictMessage,
                               clip_key,
                               decode,
                               encode,
                               split_clip_key,
)
from pipeline.bus.redis_streams import RedisBus

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "AlertMessage",
    "BackpressureTimeout",
    "Bus",
    "BusClosed",
    "BusError",
    "BusRefused",
    "BusUnavailable",
    "ClipMessage",
    "DeadLetter",
    "Delivery",
    "EmbeddingMessage",
    "HealthMessage",
    "InProcessBus",
    "LayerFeatures",
    "Message",
    "MessageError",
    "RedisBus",
    "VerdictMessage",
    "clip_key",
    "dead_topic",
    "decode",
    "encode",
    "open_bus",
    "split_clip_key",
]
