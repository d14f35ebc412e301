"""The ``camera_normal`` section and a source's ``normal`` key: per-camera normal models (pipeline.detect.camera).

``camera_normal`` sets the defaults for every camera; a source's ``normal`` overrides some of them for that camera
(``normal: {enabled: false}`` turns it off there, ``normal: {warmup_clips: 256}`` warms up longer)::

    camera_normal: {enabled: true, warmup_clips: 128}
    sources:
      - {id: lobby, uri: rtsp://..., normal: {warmup_clips: 256}}
      - {id: gate, uri: rtsp://..., normal: {enabled: false}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, create_model, model_validator

from pipeline.config.base import Section

__all__ = ["CameraDirectory", "CameraNormalConfig", "CameraNormalOverrides"]

View = Literal["scene", "activity"]


class CameraNormalConfig(Section):
    """How each camera learns its own normal and how much of the false-alarm rate its verdicts may spend."""

    enabled: bool = Field(False, description="learn each camera's normal and flag clips unlike it")
    views: tuple[View, ...] = Field(("scene", "activity"), min_length=1,
                                    description="scene: picture statistics (tampering); activity: the classifier's "
                                                "semantic features (activities this camera never shows)")
    warmup_clips: int = Field(128, ge=16, le=1_000_000,
                              description="clips learned before the model judges any; below about a hundred, the "
                                          "p-values are loose and false alarms rise")
    memory_clips: int = Field(1024, ge=16, le=1_000_000, description="recent normal clips kept and refitted on "
                                                                     "(bounded memory per camera)")
    refit_every: int = Field(64, ge=1, le=1_000_000, description="refit after this many new normal clips")
    share: float = Field(0.5, gt=0.0, lt=1.0, description="the camera model's share of the false-alarm rate; the "
                                                          "bundle keeps the rest, so the total stays at the rate")
    shrinkage: float = Field(0.2, ge=0.0, le=1.0, description="correlation shrunk toward the identity")
    activity_dims: int = Field(8, ge=1, le=256, description="the camera's own principal axes of the activity view")

    @model_validator(mode="after")
    def _check(self) -> CameraNormalConfig:
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"views repeated: {list(self.views)}")
        if self.warmup_clips > self.memory_clips:
            raise ValueError(f"warmup_clips ({self.warmup_clips}) must not exceed memory_clips ({self.memory_clips})")
        return self

    def model_kwargs(self) -> dict:
        """The arguments of :class:`pipeline.detect.camera.CameraNormal`."""
        return {"views": self.views, "warmup": self.warmup_clips, "memory": self.memory_clips,
                "refit_every": self.refit_every, "shrinkage": self.shrinkage, "activity_dims": self.activity_dims}


class _Overrides(Section):
    def apply(self, defaults: CameraNormalConfig) -> CameraNormalConfig:
        """The defaults with these overrides, validated as a whole (ValidationError names the bad field)."""
        return CameraNormalConfig.model_validate({**defaults.model_dump(), **self.model_dump(exclude_none=True)})


CameraNormalOverrides = create_model(
    "CameraNormalOverrides", __base__=_Overrides, __doc__="A source's ``normal``: the ``camera_normal`` fields to "
    "change for that camera (the others are inherited; the merged settings are validated as a whole).",
    **{name: (field.annotation | None, None) for name, field in CameraNormalConfig.model_fields.items()})


@dataclass(frozen=True)
class CameraDirectory:
    """Which camera a clip's stream belongs to, and that camera's settings: a source's stream id, or, for the files
    of a directory source (stream ids ``<id>/<path inside it>``), the directory's; a stream no source names (a
    clip published by another decoder, a camera added at run time) is a camera of its own with the defaults."""

    default: CameraNormalConfig = field(default_factory=CameraNormalConfig)
    cameras: Mapping[str, CameraNormalConfig] = field(default_factory=dict)
    directories: frozenset[str] = frozenset()
    """The cameras that are directory sources, whose files' streams are ``<camera>/<path>``."""

    def resolve(self, stream_id: str) -> tuple[str, CameraNormalConfig]:
        """``(camera id, settings)`` of the stream ``stream_id``."""
        if stream_id in self.cameras:
            return stream_id, self.cameras[stream_id]
        prefixes = [camera for camera in self.directories if stream_id.startswith(camera + "/")]
        if prefixes:
            camera = max(prefixes, key=len)
            return camera, self.cameras.get(camera, self.default)
        return stream_id, self.default

    @property
    def enabled(self) -> bool:
        """Whether any camera learns its normal (the classifier then computes scene statistics)."""
        return self.default.enabled or any(settings.enabled for settings in self.cameras.values())
