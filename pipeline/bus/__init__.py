"""How stages talk: two transports with one contract (payloads are bytes; `pipeline.stream` gives them meaning).

    bus = open_bus("redis://cache:6379/0")        # or open_bus() for threads in one process
    bus.publish(topic, payload, key=clip_key)
    for delivery in bus.consume(topic, group="classifier", consumer="gpu-0"):
        ...                                          # a bad payload: bus.dead_letter(delivery, reason)
        bus.publish(next_topic, result, key=clip_key)
        bus.ack(topic, "classifier", [delivery.id])  # only after the result is published

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
from pipeline.bus.redis_streams import RedisBus

__all__ = [
    "BackpressureTimeout",
    "Bus",
    "BusClosed",
    "BusError",
    "BusRefused",
    "BusUnavailable",
    "DeadLetter",
    "Delivery",
    "InProcessBus",
    "RedisBus",
    "dead_topic",
    "open_bus",
]
