"""Streaming as a library: the messages stages exchange, the topology that wires them, and the steps that do the
work (`pipeline.stream.steps`: decode, classify, score, record), each usable without a bus.

    from pipeline.stream import ClipMessage, decode, stage
    topic = stage("classifier").input_topic          # the topology names every topic
    clip = decode(delivery.payload, expect=ClipMessage)

The processes, threads and loops that run the steps against a bus live in the `workers` package.
"""

from pipeline.stream.messages import (
    ClipMessage,
    EmbeddingMessage,
    HealthMessage,
    Message,
    MessageError,
    VerdictMessage,
    decode,
    encode,
)
from pipeline.stream.topology import STAGES, WORKERS, stage

__all__ = [
    "STAGES",
    "WORKERS",
    "ClipMessage",
    "EmbeddingMessage",
    "HealthMessage",
    "Message",
    "MessageError",
    "VerdictMessage",
    "decode",
    "encode",
    "stage",
]
