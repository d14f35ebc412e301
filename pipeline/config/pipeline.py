"""`PipelineConfig`: the whole YAML file, one field per section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.alerts import WebhookConfig
from pipeline.config.alerts import AlertsConfig
from pipeline.config.base import ConfigPath, Section
from pipeline.config.bus import BusConfig
from pipeline.config.camera import CameraDirectory, CameraNormalConfig
from pipeline.config.console import ConsoleConfig
from pipeline.config.ops import OpsConfig
from pipeline.config.sources import SourceConfig, check_stream_ids
from pipeline.config.stages import ClassifierConfig, DecoderConfig, DensityConfig
from pipeline.errors import validation_problem

__all__ = ["PipelineConfig"]


class PipelineConfig(Section):
    """The whole pipeline; `source_file` is where it was loaded from (used in error messages)."""

    sources: list[SourceConfig] = Field(default_factory=list)
    bundle: ConfigPath = Field(description="detector bundle directory (bundle.json, densities, calibration)")
    bus: BusConfig = Field(default_factory=BusConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    density: DensityConfig = Field(default_factory=DensityConfig)
    camera_normal: CameraNormalConfig = Field(default_factory=CameraNormalConfig,
                                              description="per-camera normal models (defaults; a source's "
                                                          "`normal` changes them for its camera)")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    ops: OpsConfig = Field(default_factory=OpsConfig)
    console: ConsoleConfig | None = Field(None, description="serve the operator's console from the sink")
    _source_file: str = PrivateAttr("config")
    _source_path: Path | None = PrivateAttr(None)

    @field_validator("bundle")
    @classmethod
    def _check_bundle(cls, bundle: Path) -> Path:
        if not bundle.is_dir():
            raise ValueError(f"{bundle}: no such bundle directory")
        if not (bundle / "bundle.json").is_file():
            raise ValueError(f"{bundle}: not a detector bundle (no bundle.json; make one with `clipwatch fit`)")
        return bundle

    @model_validator(mode="after")
    def _check_consistency(self) -> PipelineConfig:
        check_stream_ids(self.sources)
        for index, source in enumerate(self.sources):
            if source.normal is not None:
                try:
                    source.normal.apply(self.camera_normal)
                except ValidationError as error:
                    raise ValueError(f"sources.{index}.normal: {validation_problem(error)}") from None
        return self

    def camera_directory(self) -> CameraDirectory:
        """Each source's camera and its per-camera normal settings (sources whose path does not exist are left to
        the defaults)."""
        cameras = {source.stream_id: (source.normal.apply(self.camera_normal) if source.normal is not None
                                      else self.camera_normal)
                   for source in self.sources if source.stream_id is not None}
        directories = frozenset(source.stream_id for source in self.sources
                                if source.stream_id is not None and source.path is not None and source.path.is_dir())
        return CameraDirectory(self.camera_normal, cameras, directories)

    def thumbnail_size(self) -> int:
        """The classifier's thumbnail size: ``classifier.thumbnail_size``, or 0 when ``alerts.thumbnails_dir`` is
        unset, since nothing else keeps a thumbnail; each one costs a JPEG and, with a heatmap decoder in the
        bundle, a decoder pass per clip."""
        return self.classifier.thumbnail_size if self.alerts.thumbnails_dir is not None else 0

    @property
    def source_file(self) -> str:
        return self._source_file

    @property
    def source_path(self) -> Path | None:
        """The YAML file this config was read from (absolute); None when it was built from data."""
        return self._source_path

    def webhook_config(self, environ: Mapping[str, str] | None = None) -> WebhookConfig | None:
        return self.alerts.webhook_config(self._source_file, environ)
