"""Standard clip preprocessing for 3D CNNs: short-side resize, centre crop, mean/std normalisation, (B, 3, T, S, S).

How a frame is fitted to the square input (``fit``): ``crop`` keeps the aspect ratio and drops the sides of a
wide frame (the classic video-classification pipeline); ``stretch`` then scales the short-side-resized frame to a
square, so the model sees the whole field of view, squeezed. Both resize to the short side first, with the same
call the decoders use when they scale frames as they decode, so a clip scaled early gets the same pixels.

All frames of a batch are resized in one call on uint8 data (PyTorch's vectorised channels-last bilinear kernel):
on one CPU thread that measured about 2x faster than OpenCV frame by frame and 9x faster than resizing in float32
(`benchmarks/decode.py` compares the three). Only the cropped pixels are then converted to float.

Every resize goes through `resize_target`, which refuses a clip whose resized frames would exceed
`MAX_RESIZED_PIXELS` before anything is allocated: a 16 x 1 x 65536 clip (3 MiB) would otherwise be scaled up
to 20 GB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
"""Per-channel RGB mean of Kinetics-400 in 0-1 units (the torchvision / pytorchvideo video models' statistics)."""
KINETICS_STD = (0.22803, 0.22145, 0.216989)
"""Per-channel RGB standard deviation of Kinetics-400 in 0-1 units."""


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after scaling so the shorter side is `short_side`, the other rounded (320x240 → 171x128)."""
    if height <= width:
        return short_side, max(short_side, int(round(width * short_side / height)))
    return max(short_side, int(round(height * short_side / width))), short_side


FITS = ("crop", "stretch")
"""How a frame is fitted to the model's square input (see the module docstring)."""

MIN_FRAME_SIDE = 16
"""Smallest frame width and height worth scaling up to a model's input; smaller videos are refused, not guessed at."""

MAX_RESIZED_PIXELS = 2**24
"""Most pixels (frames x height x width) one clip may hold after resizing: 48 MiB as uint8 RGB, 8x a 16-frame clip
of 128 x 1024 (short side 128 at the 8:1 aspect ratio clip messages allow)."""


def resize_target(length: int, height: int, width: int, short_side: int,
                  size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) a clip of `length` frames is resized to: `size`, or the short side scaled to `short_side`.

    ValueError (one line) if the resized clip would hold more than `MAX_RESIZED_PIXELS` pixels, so an extreme
    frame shape is refused before any memory is allocated for it.
    """
    out_height, out_width = size if size is not None else resized_size(height, width, short_side)
    if length * out_height * out_width > MAX_RESIZED_PIXELS:
        raise ValueError(f"{height}x{width} frames would be resized to {out_height}x{out_width}: {length} such "
                         f"frames exceed the limit of {MAX_RESIZED_PIXELS} pixels per clip")
    return out_height, out_width


def resize_frames(frames: np.ndarray | torch.Tensor, short_side: int, *, size: tuple[int, int] | None = None,
                  antialias: bool = False) -> torch.Tensor:
    """(T, H, W, 3) or (B, T, H, W, 3) uint8 frames resized as `preprocess` resizes them: bilinear on uint8, all
    frames in one call; ``antialias`` low-passes before downscaling (off matches OpenCV INTER_LINEAR).

    Returns the frames themselves (as a tensor) when the size does not change; ValueError as in `resize_target`
    (the limit applies to each clip of T frames).
    """
    clips = torch.as_tensor(frames)
    *leading, height, width, channels = clips.shape
    out_height, out_width = resize_target(leading[-1], height, width, short_side, size)
    if (out_height, out_width) == (height, width):
        return clips
    images = F.interpolate(clips.reshape(-1, height, width, channels).permute(0, 3, 1, 2),
                           size=(out_height, out_width), mode="bilinear", align_corners=False, antialias=antialias)
    return images.permute(0, 2, 3, 1).contiguous().reshape(*leading, out_height, out_width, channels)


def scale_down(frames: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 frames ``(..., H, W, 3)`` whose shorter side is longer than `short_side` scaled down to it by
    `resize_frames` (a new array); smaller frames are returned as they are, never scaled up."""
    if min(frames.shape[-3:-1]) <= short_side:
        return frames
    return resize_frames(frames, short_side).numpy()


def resize_crop(frames: np.ndarray | torch.Tensor, short_side: int, crop: int, *,
                size: tuple[int, int] | None = None, antialias: bool = False, fit: str = "crop") -> torch.Tensor:
    """The centred ``crop`` x ``crop`` window of the frames fitted to the model (`fitted_frames`):
    ``(..., T, crop, crop, 3)`` uint8, a view of the fitted frames (of ``frames`` themselves when they are not
    resized). These are the pixels `preprocess` normalises; ValueError before anything is allocated if the clip is
    too large or ``crop`` too large.
    """
    fitted = fitted_frames(frames, short_side, crop, size=size, antialias=antialias, fit=fit)
    top, left = crop_offsets(fitted.shape[-3], fitted.shape[-2], crop)
    return fitted[..., top:top + crop, left:left + crop, :]


def fitted_frames(frames: np.ndarray | torch.Tensor, short_side: int, crop: int, *,
                  size: tuple[int, int] | None = None, antialias: bool = False, fit: str = "crop") -> torch.Tensor:
    """`resize_frames`, then with ``fit="stretch"`` scaled to a square of the shorter side: the frames whose centre
    ``crop`` window the model sees. ValueError (before any allocation) as in `resize_target`, for an unknown `fit`
    or a ``crop`` larger than the fitted frames."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; one of {', '.join(FITS)}")
    clips = torch.as_tensor(frames)
    length, height, width = clips.shape[-4:-1]
    out_height, out_width = resize_target(length, height, width, short_side, size)
    if crop > min(out_height, out_width):
        raise ValueError(f"crop {crop} is larger than the resized frames {out_height}x{out_width}")
    resized = resize_frames(clips, short_side, size=(out_height, out_width), antialias=antialias)
    if fit == "stretch":
        side = min(out_height, out_width)
        resized = resize_frames(resized, side, size=(side, side), antialias=antialias)
    return resized


def model_window(height: int, width: int, short_side: int, crop: int, fit: str = "crop") -> tuple[int, int, int, int]:
    """``(top, left, window_height, window_width)``: the part of an ``height`` x ``width`` frame the model's input
    covers after fitting and cropping (the whole frame, less the crop margin, with ``fit="stretch"``)."""
    if fit == "stretch":
        window_height = min(round(height * crop / short_side), height)
        window_width = min(round(width * crop / short_side), width)
    else:
        window_height = window_width = min(round(crop * min(height, width) / short_side), height, width)
    return (height - window_height) // 2, (width - window_width) // 2, window_height, window_width


def crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of a centred `crop` x `crop` window; an odd margin leaves the extra pixel at the bottom/right."""
    return (height - crop) // 2, (width - crop) // 2


def preprocess(frames: np.ndarray | torch.Tensor, short_side: int = 128, crop: int = 112,
               mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD, *,
               size: tuple[int, int] | None = None, antialias: bool = False, fit: str = "crop") -> torch.Tensor:
    """Clips of uint8 RGB frames to a normalised float32 batch for a video classifier.

    Args:
        frames: (T, H, W, 3) or (B, T, H, W, 3) uint8 RGB, numpy or torch; ValueError (before any allocation)
            if a clip would exceed `MAX_RESIZED_PIXELS` once resized.
        short_side: resize so the shorter side has this many pixels, keeping the aspect ratio.
        crop: side of the centred square crop taken after resizing.
        mean, std: per-channel RGB statistics in 0-1 units; output is `(x / 255 - mean) / std`.
        size: (height, width) to resize to instead of `short_side` (C3D's original pipeline uses (128, 171)).
        antialias: low-pass before downscaling (torchvision's tensor default); off matches OpenCV INTER_LINEAR.
        fit: ``crop`` (keep the aspect ratio, drop the sides) or ``stretch`` (squeeze the whole frame to a square).

    Returns:
        (B, 3, T, crop, crop) float32, contiguous; B = 1 for a single (T, H, W, 3) clip.
    """
    clips = torch.as_tensor(frames)
    if clips.dtype != torch.uint8:
        raise ValueError(f"preprocess: frames must be uint8 RGB, got {clips.dtype}")
    if clips.ndim == 4:
        clips = clips.unsqueeze(0)
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"preprocess: frames must be (T, H, W, 3) or (B, T, H, W, 3), got {tuple(clips.shape)}")
    batch, length = clips.shape[:2]
    scale, shift = _affine(mean, std)
    window = resize_crop(clips, short_side, crop, size=size, antialias=antialias, fit=fit)
    out = torch.empty((batch, 3, length, crop, crop), dtype=torch.float32)
    out.copy_(window.permute(0, 4, 1, 2, 3))
    return out.mul_(scale).add_(shift)


def _affine(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x / 255 - mean) / std` as `x * scale + shift` (computed in float64), shaped for (B, 3, T, S, S)."""
    mean64 = np.asarray(mean, dtype=np.float64)
    std64 = np.asarray(std, dtype=np.float64)
    if mean64.shape != (3,) or std64.shape != (3,) or np.any(std64 <= 0):
        raise ValueError(f"preprocess: mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
    scale = torch.from_numpy((1.0 / (255.0 * std64)).astype(np.float32)).view(1, 3, 1, 1, 1)
    shift = torch.from_numpy((-mean64 / std64).astype(np.float32)).view(1, 3, 1, 1, 1)
    return scale, shift
