"""The pipeline configuration: pydantic models of the YAML files read by ``clipwatch run`` and ``clipwatch worker``.

    config = load_config("configs/local.yaml")   # ConfigError: "configs/local.yaml: sources.0.urii: unknown key ..."

One module per section (`sources`, `bus`, `stages`, `alerts`, `ops`), the whole file in `pipeline`, reading it in
`loader`. Every section forbids unknown keys, so a typo fails at start with one line naming the file and the key
path. String values may use ``${VAR}`` or ``${VAR:-default}``, substituted field by field after the YAML is parsed
(a value can never inject YAML); relative paths are relative to the config file's directory (see `base`).
"""

from pipeline.config.alerts import AlertsConfig, WebhooksConfig
from pipeline.config.base import ConfigError
from pipeline.config.bus import BusConfig
from pipeline.config.loader import load_config, parse_config, reload_sources
from pipeline.config.ops import OpsConfig
from pipeline.config.pipeline import PipelineConfig
from pipeline.config.sources import SourceConfig, check_stream_ids, parse_source
from pipeline.config.stages import ClassifierConfig, DecoderConfig, DensityConfig

__all__ = [
    "AlertsConfig",
    "BusConfig",
    "ClassifierConfig",
    "ConfigError",
    "DecoderConfig",
    "DensityConfig",
    "OpsConfig",
    "PipelineConfig",
    "SourceConfig",
    "WebhooksConfig",
    "check_stream_ids",
    "load_config",
    "parse_config",
    "parse_source",
    "reload_sources",
]
