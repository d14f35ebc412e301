"""``model.json``: the manifest that travels with ``model.safetensors`` (architecture, classes, preprocessing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from pipeline.errors import validation_problem
from pipeline.models.errors import WeightsError

FORMAT_VERSION = 1
MANIFEST_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


class Preprocessing(BaseModel):
    """How clips must be prepared for the model: sampling, resizing, cropping and normalisation per channel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clip_len: int = Field(ge=1, description="frames per clip")
    frame_step: int = Field(ge=1, description="take every frame_step-th frame")
    short_side: int = Field(ge=1, description="resize so the shorter side has this many pixels")
    crop: int = Field(ge=1, description="square centre crop after resizing")
    fit: Literal["crop", "stretch"] = Field("crop", description="crop: keep the aspect ratio and drop the sides of a "
                                                                "wide frame; stretch: squeeze the whole frame to a "
                                                                "square before the crop")
    mean: tuple[float, ...] = Field(min_length=1, description="per-channel mean, in the units the model saw")
    std: tuple[float, ...] = Field(min_length=1, description="per-channel standard deviation")

    @model_validator(mode="after")
    def _check_channels(self) -> Preprocessing:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.crop > self.short_side:
            raise ValueError(f"crop {self.crop} is larger than short_side {self.short_side}")
        return self

    @model_serializer(mode="wrap")
    def _omit_crop_fit(self, handler):
        """``fit`` is written only when it is ``stretch``: a cropping model's manifest stays readable by releases
        that predate the field (they crop)."""
        data = handler(self)
        if data.get("fit") == "crop":
            del data["fit"]
        return data


class ModelManifest(BaseModel):
    """Everything needed to rebuild and feed a saved model; ``sha256`` is the digest of ``model.safetensors``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int
    architecture: str
    options: dict[str, Any]
    num_classes: int = Field(ge=1)
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_classes(self) -> ModelManifest:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes={self.num_classes}")
        return self


def read_manifest(path: Path) -> ModelManifest:
    """Parse and validate ``model.json`` at ``path``; one-line :class:`WeightsError` on any problem."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: cannot read manifest: {exc}") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: manifest must be a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: unsupported format_version {version!r} (this clipwatch reads version {FORMAT_VERSION})"
        )
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise WeightsError(f"{path}: invalid manifest: {validation_problem(exc)}") from None


def build_manifest(**fields: Any) -> ModelManifest:
    """Validate manifest fields at save time; one-line :class:`WeightsError` naming the bad fields."""
    try:
        manifest = ModelManifest.model_validate({"format_version": FORMAT_VERSION, **fields})
        json.dumps(manifest.model_dump(mode="json"), allow_nan=False)
    except ValidationError as exc:
        raise WeightsError(f"cannot save model: {validation_problem(exc)}") from None
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"cannot save model: options/extra must be plain JSON values ({exc})") from None
    return manifest

