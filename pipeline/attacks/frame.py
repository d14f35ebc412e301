"""Adversarial frames: border geometry, applying a frame to clips, and the :class:`AdversarialFrame` file format.

A frame of ``width`` pixels REPLACES the outermost pixels of every frame of a clip (the clip keeps its size; the
interior is untouched). Its pixels are stored as a ``(C, T', H, W)`` tensor in ``[0, 1]`` with ``T' = 1`` (one
frame shared over time) or ``T' = T`` (one per time step, as in Zając et al.'s video attack); interior entries
are zero and ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.attacks.common import atomic_write, check_clips, file_sha256
from pipeline.attacks.errors import AttackError, AttackFileError

REFERENCE_WIDTH = 4
"""Zając et al.'s video frame width, in pixels at :data:`REFERENCE_SIZE`."""
REFERENCE_SIZE = 112
"""Frame side the reference width refers to (C3D / R3D crops)."""
FORMAT_VERSION = 1
PIXELS_KEY = "pixels"


def scaled_frame_width(size: int, width: int = REFERENCE_WIDTH, reference_size: int = REFERENCE_SIZE) -> int:
    """Frame width for ``size``-pixel frames that covers the same fraction as ``width`` at ``reference_size``.

    Rounded to the nearest pixel and at least 1: 4 px at 112 → 2 px at 56, 1 px at 32, 9 px at 256.
    """
    if size < 1 or width < 1 or reference_size < 1:
        raise AttackError(
            f"scaled_frame_width: sizes and width must be positive, got {size}, {width}, {reference_size}"
        )
    return max(1, round(width * size / reference_size))


def border_mask(height: int, width: int, frame_width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(H, W)`` bool mask, True on the ``frame_width`` outermost rows and columns."""
    if frame_width < 1 or 2 * frame_width >= min(height, width):
        raise AttackError(
            f"frame width {frame_width} must be at least 1 and leave an interior in {height}x{width} frames"
        )
    mask = torch.ones((height, width), dtype=torch.bool, device=device)
    mask[frame_width:-frame_width, frame_width:-frame_width] = False
    return mask


def apply_frame(clips: torch.Tensor, pixels: torch.Tensor, width: int) -> torch.Tensor:
    """Pixel clips ``(B, C, T, H, W)`` with their ``width``-pixel border replaced by the frame's pixels.

    ``pixels`` is ``(C, T', H, W)`` (one frame for all clips) or ``(B, C, T', H, W)`` (one per clip), with
    ``T'`` 1 or ``T``. Differentiable in ``pixels``; the interior of ``clips`` is copied bit for bit.
    """
    if clips.ndim != 5:
        raise AttackError(f"apply_frame: expected (B, C, T, H, W) clips, got {tuple(clips.shape)}")
    batch, channels, length, height, side = clips.shape
    geometry = pixels.shape[-4:]
    if pixels.ndim not in (4, 5) or (pixels.ndim == 5 and pixels.shape[0] != batch):
        raise AttackError(
            f"apply_frame: frame must be (C, T', H, W) or ({batch}, C, T', H, W), got {tuple(pixels.shape)}"
        )
    if geometry[0] != channels or geometry[2:] != (height, side) or geometry[1] not in (1, length):
        raise AttackError(
            f"apply_frame: frame {tuple(geometry)} does not fit clips {tuple(clips.shape[1:])} "
            f"(needs C={channels}, T' in (1, {length}), {height}x{side})"
        )
    mask = border_mask(height, side, width, device=clips.device)
    return torch.where(mask, pixels.to(clips.dtype), clips)


@dataclass
class AdversarialFrame:
    """A universal adversarial frame: ``pixels`` ``(C, T', H, W)`` in ``[0, 1]``, border ``width`` in pixels.

    ``info`` holds JSON-able provenance (attack settings, model, training-set size, final loss).
    """

    pixels: torch.Tensor
    width: int
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4 or not self.pixels.is_floating_point():
            raise AttackError(
                f"AdversarialFrame: pixels must be a float (C, T', H, W) tensor, got {tuple(self.pixels.shape)}"
            )
        mask = border_mask(self.pixels.shape[2], self.pixels.shape[3], self.width, device=self.pixels.device)
        if not bool(torch.isfinite(self.pixels).all()) or float(self.pixels.min()) < 0 or float(self.pixels.max()) > 1:
            raise AttackError("AdversarialFrame: pixels must be finite and lie in [0, 1]")
        self.pixels = (self.pixels.detach() * mask).to(torch.float32).contiguous()

    @property
    def per_frame(self) -> bool:
        """True when the frame varies over time (one per time step)."""
        return self.pixels.shape[1] > 1

    def apply(self, clips: torch.Tensor) -> torch.Tensor:
        """Pixel clips ``(B, C, T, H, W)`` in ``[0, 1]`` with this frame in their border."""
        clips = check_clips(clips)
        return apply_frame(clips, self.pixels.to(clips.device), self.width)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<stem>.safetensors`` (pixels) and ``<stem>.json`` (width, shape, digest, info); returns the first."""
        weights = Path(path).with_suffix(".safetensors")
        try:
            info_text = json.dumps(self.info, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AttackFileError(f"{weights}: frame info must be plain JSON values ({exc})") from None
        try:
            weights.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(weights, lambda tmp: save_file({PIXELS_KEY: self.pixels.cpu()}, tmp))
            manifest = {
                "format_version": FORMAT_VERSION,
                "kind": "adversarial_frame",
                "width": self.width,
                "shape": list(self.pixels.shape),
                "sha256": file_sha256(weights),
                "info": json.loads(info_text),
            }
            atomic_write(weights.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
        except OSError as exc:
            raise AttackFileError(f"{weights}: cannot write frame: {exc}") from None
        return weights

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AdversarialFrame:
        """Read a frame written by :meth:`save` (either file name); checks the digest, shape and value range."""
        weights = Path(path).with_suffix(".safetensors")
        manifest_path = weights.with_suffix(".json")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AttackFileError(f"{manifest_path}: cannot read frame manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            raise AttackFileError(f"{manifest_path}: not a version-{FORMAT_VERSION} adversarial frame manifest")
        try:
            digest = file_sha256(weights)
            tensors = load_file(str(weights))
        except (OSError, SafetensorError) as exc:
            raise AttackFileError(f"{weights}: cannot read frame pixels: {exc}") from None
        if digest != manifest.get("sha256"):
            raise AttackFileError(f"{weights}: sha256 {digest[:12]}… does not match its manifest")
        pixels = tensors.get(PIXELS_KEY)
        if pixels is None or list(pixels.shape) != manifest.get("shape"):
            raise AttackFileError(f"{weights}: expected a '{PIXELS_KEY}' tensor of shape {manifest.get('shape')}")
        try:
            return cls(pixels, int(manifest["width"]), dict(manifest.get("info", {})))
        except (AttackError, KeyError, TypeError) as exc:
            raise AttackFileError(f"{weights}: invalid frame: {exc}") from None

