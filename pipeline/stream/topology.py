"""The pipeline's shape, in one table: each stage, the topic it reads, the message it takes, the topic it writes.

Workers, the drain order of the in-process run, consumer groups and ops ports all come from here; no other module
names a topic. A stage's name is also its consumer group.

    decoder ──clips──▶ classifier ──embeddings──▶ density ──verdicts──▶ sink
       └──────────────────────────health──────────────────────────────▶ health (runs in the sink worker)
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.stream.messages import ClipMessage, EmbeddingMessage, HealthMessage, Message, VerdictMessage

__all__ = ["CLIPS", "EMBEDDINGS", "HEALTH", "OPS_NAMES", "STAGES", "VERDICTS", "WORKERS", "StageSpec", "stage",
           "worker_stages"]

CLIPS, EMBEDDINGS, VERDICTS, HEALTH = "clips", "embeddings", "verdicts", "health"


@dataclass(frozen=True)
class StageSpec:
    """One stage: `input_topic` (None for the decoder, which reads sources) carries `input_type` messages; the
    stage publishes to `output_topic` (None at the end of the flow); `worker` is the process that runs it."""

    name: str
    input_topic: str | None
    input_type: type[Message] | None
    output_topic: str | None
    worker: str


STAGES: tuple[StageSpec, ...] = (
    StageSpec("decoder", None, None, CLIPS, worker="decoder"),
    StageSpec("classifier", CLIPS, ClipMessage, EMBEDDINGS, worker="classifier"),
    StageSpec("density", EMBEDDINGS, EmbeddingMessage, VERDICTS, worker="density"),
    StageSpec("sink", VERDICTS, VerdictMessage, None, worker="sink"),
    StageSpec("health", HEALTH, HealthMessage, None, worker="sink"),
)
"""In flow order; the consuming stages (all but the decoder) are also the order in which a run drains."""

WORKERS: tuple[str, ...] = tuple(dict.fromkeys(spec.worker for spec in STAGES))
"""The processes of a scaled-out pipeline (``clipwatch worker NAME``), in flow order."""

OPS_NAMES: tuple[str, ...] = (*WORKERS, "run")
"""Who serves /healthz and /metrics: each worker, and "run" (the whole pipeline in one process)."""


def stage(name: str) -> StageSpec:
    """The stage called `name`; KeyError names the stages there are."""
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"no stage {name!r}; stages: {', '.join(spec.name for spec in STAGES)}")


def worker_stages(worker: str) -> list[StageSpec]:
    """The stages worker `worker` runs, in flow order."""
    return [spec for spec in STAGES if spec.worker == worker]
