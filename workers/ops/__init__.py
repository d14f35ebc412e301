"""Operations around the workers: metrics, health (/healthz, /metrics), logs, signals."""

from workers.ops.health import HealthBoard, OpsServer
from workers.ops.logs import configure_logging
from workers.ops.metrics import PipelineMetrics, StageMetrics
from workers.ops.signals import handle_signals

__all__ = ["HealthBoard", "OpsServer", "PipelineMetrics", "StageMetrics", "configure_logging", "handle_signals"]
