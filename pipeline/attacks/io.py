"""Lossless storage of attacked clips: ``<stem>.npz`` holding uint8 ``(B, T, H, W, C)`` plus ``<stem>.json`` metadata.

Rounding to uint8 is part of the threat model: an adversarial clip only counts if it still fools the model once
stored as 8-bit video frames. The attacks here already return values on the 8-bit grid (``quantize=True``), so
saving them is exact; reading back returns bit-identical uint8 frames. No pickle anywhere (``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.attacks.common import PIXEL_LEVELS, atomic_write, check_clips, file_sha256
from pipeline.attacks.errors import AttackError, AttackFileError

FORMAT_VERSION = 1
FRAMES_KEY = "frames"


def to_uint8(clips: torch.Tensor) -> np.ndarray:
    """Pixel clips ``(B, C, T, H, W)`` in ``[0, 1]`` → uint8 frames ``(B, T, H, W, C)``, rounded to nearest."""
    clips = check_clips(clips)
    levels = torch.round(clips.detach().to(torch.float64) * PIXEL_LEVELS).to(torch.uint8)
    return levels.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()


def from_uint8(frames: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 frames ``(B, T, H, W, C)`` → float32 pixel clips ``(B, C, T, H, W)`` in ``[0, 1]``."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 5:
        shape = getattr(frames, "shape", None)
        raise AttackError(f"from_uint8: expected a uint8 (B, T, H, W, C) array, got {type(frames).__name__} {shape}")
    clips = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 4, 1, 2, 3)
    return clips.to(torch.float32).div_(PIXEL_LEVELS).contiguous()


@dataclass(frozen=True)
class AttackedClips:
    """Stored adversarial clips and how they were made.

    ``frames`` is uint8 ``(B, T, H, W, C)``; ``labels`` the true labels; ``params`` the attack settings; ``source``
    names where the clean clips came from (one string, or one per clip); ``extra`` holds anything else (targets…).
    """

    frames: np.ndarray
    attack: str
    params: dict[str, Any]
    labels: list[int]
    source: str | list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def clips(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The clips as float pixels ``(B, C, T, H, W)`` in ``[0, 1]``, ready for an attack or a model."""
        return from_uint8(self.frames, device)


def save_attacked_clips(
    path: str | os.PathLike[str],
    clips: torch.Tensor | np.ndarray,
    *,
    attack: str,
    params: dict[str, Any],
    labels: torch.Tensor | Sequence[int],
    source: str | Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<stem>.npz`` (uint8 frames, compressed, lossless) and ``<stem>.json``; returns the ``.npz`` path.

    ``clips`` are float pixel clips ``(B, C, T, H, W)`` (rounded to uint8 here) or uint8 frames ``(B, T, H, W, C)``.
    """
    archive = Path(path).with_suffix(".npz")
    frames = clips if isinstance(clips, np.ndarray) else to_uint8(clips)
    if frames.dtype != np.uint8 or frames.ndim != 5:
        raise AttackFileError(f"{archive}: frames must be uint8 (B, T, H, W, C), got {frames.dtype} {frames.shape}")
    label_list = [int(label) for label in torch.as_tensor(labels).reshape(-1).tolist()]
    if len(label_list) != len(frames):
        raise AttackFileError(f"{archive}: {len(label_list)} labels for {len(frames)} clips")
    sources = source if source is None or isinstance(source, str) else [str(item) for item in source]
    if isinstance(sources, list) and len(sources) != len(frames):
        raise AttackFileError(f"{archive}: {len(sources)} sources for {len(frames)} clips")
    try:
        metadata_text = json.dumps({"params": params, "extra": extra or {}}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AttackFileError(f"{archive}: params/extra must be plain JSON values ({exc})") from None
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(archive, lambda tmp: _write_npz(tmp, frames))
        metadata = {
            "format_version": FORMAT_VERSION,
            "kind": "attacked_clips",
            "attack": attack,
            **json.loads(metadata_text),
            "labels": label_list,
            "source": sources,
            "shape": list(frames.shape),
            "dtype": "uint8",
            "layout": "BTHWC",
            "sha256": file_sha256(archive),
        }
        atomic_write(archive.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(metadata, indent=2)))
    except OSError as exc:
        raise AttackFileError(f"{archive}: cannot write attacked clips: {exc}") from None
    return archive


def load_attacked_clips(path: str | os.PathLike[str]) -> AttackedClips:
    """Read clips written by :func:`save_attacked_clips` (either file name); checks digest, shape and dtype."""
    archive = Path(path).with_suffix(".npz")
    metadata_path = archive.with_suffix(".json")
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AttackFileError(f"{metadata_path}: cannot read attacked-clips metadata: {exc}") from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise AttackFileError(f"{metadata_path}: not a version-{FORMAT_VERSION} attacked-clips metadata file")
    try:
        digest = file_sha256(archive)
        with np.load(archive, allow_pickle=False) as npz:
            frames = npz[FRAMES_KEY]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise AttackFileError(f"{archive}: cannot read attacked clips: {exc}") from None
    if digest != metadata.get("sha256"):
        raise AttackFileError(f"{archive}: sha256 {digest[:12]}… does not match {metadata_path.name}")
    if frames.dtype != np.uint8 or list(frames.shape) != metadata.get("shape"):
        raise AttackFileError(
            f"{archive}: expected uint8 frames of shape {metadata.get('shape')}, got {frames.dtype} {frames.shape}"
        )
    try:
        return AttackedClips(
            frames=frames,
            attack=str(metadata["attack"]),
            params=dict(metadata["params"]),
            labels=[int(label) for label in metadata["labels"]],
            source=metadata.get("source"),
            extra=dict(metadata.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AttackFileError(f"{metadata_path}: invalid metadata: {exc}") from None


def _write_npz(tmp: str, frames: np.ndarray) -> None:
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **{FRAMES_KEY: frames})
