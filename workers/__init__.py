"""Long-running pipeline workers (decoder, classifier, density, sink), each a thin loop around a library step.

    run_pipeline(load_config("configs/local.yaml"))          # all stages in one process (clipwatch run)
    run_worker("classifier", load_config("configs/redis.yaml"))   # one stage per process (clipwatch worker)

The steps are pure and usable without a bus: `ClassifierStep`, `DensityStep`, `SinkStep`, and the decoder's
`file_clip_messages`. Names are imported on first use, so a sink process never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassifierStage": "workers.classifier",
    "ClassifierStep": "workers.classifier",
    "DecoderWorker": "workers.decoder",
    "DensityStage": "workers.density",
    "DensityStep": "workers.density",
    "HealthBoard": "workers.ops",
    "Inbound": "workers.runtime",
    "OpsServer": "workers.ops",
    "Outcome": "workers.runtime",
    "PipelineMetrics": "workers.ops",
    "Rejected": "workers.runtime",
    "ReorderBuffer": "workers.reorder",
    "RunSummary": "workers.launch",
    "SinkStage": "workers.sink",
    "SinkStep": "workers.sink",
    "Stage": "workers.runtime",
    "StageLoop": "workers.runtime",
    "VerdictLog": "workers.sink",
    "file_clip_messages": "workers.decoder",
    "gather_batch": "workers.runtime",
    "run_pipeline": "workers.launch",
    "run_worker": "workers.launch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
