"""Motion-energy initialisation of a video model's first convolution (Adelson & Bergen's oriented filters).

Classes defined by motion alone give a randomly initialised 3D CNN almost no gradient towards direction-selective
features at first, and small training sets let it fit the videos' appearance instead. Starting ``conv1`` as
quadrature pairs of space-time oriented Gabor filters, one pair per direction, gives the network units that
respond to motion in a known direction from the first step; training then refines them like any other weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DIRECTIONS = 8
"""Directions of motion, evenly spaced; each gets a quadrature pair (cosine and sine phase) of filters."""


def oriented_filters(kernel: tuple[int, int, int], count: int, *, speed: float = 1.0, wavelength: float = 6.0,
                     sigma_space: float = 2.0, sigma_time: float = 2.0) -> torch.Tensor:
    """``count`` (T, H, W) space-time Gabor filters cycling over DIRECTIONS directions and two phases.

    Filter ``k`` prefers a pattern of ``wavelength`` pixels moving at ``speed`` pixels per frame in direction
    ``2 pi (k // 2) / DIRECTIONS`` (image x right, y down); each has zero mean and unit norm.
    """
    depth, height, width = kernel
    t, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in kernel), indexing="ij")
    envelope = torch.exp(-(x**2 + y**2) / (2 * sigma_space**2) - t**2 / (2 * sigma_time**2))
    filters = []
    for k in range(count):
        angle = 2 * math.pi * ((k // 2) % DIRECTIONS) / DIRECTIONS
        phase = (k % 2) * math.pi / 2
        position = x * math.cos(angle) + y * math.sin(angle) - speed * t
        gabor = torch.cos(2 * math.pi * position / wavelength + phase) * envelope
        gabor = gabor - gabor.mean()
        filters.append(gabor / gabor.norm())
    return torch.stack(filters)


@torch.no_grad()
def motion_energy_init(conv: nn.Conv3d, **options: float) -> None:
    """Set the first ``2 * DIRECTIONS`` output channels of ``conv`` to oriented filters on the mean of its input
    channels, scaled to the norm the existing (e.g. Kaiming) weights have; other channels keep their weights."""
    out_channels, in_channels = conv.weight.shape[:2]
    count = min(out_channels, 2 * DIRECTIONS)
    if conv.weight.shape[2] < 2:
        raise ValueError(f"motion-energy init needs a temporal kernel of 2 or more, got {tuple(conv.weight.shape)}")
    norm = conv.weight[:count].flatten(1).norm(dim=1).mean()
    filters = oriented_filters(tuple(conv.weight.shape[2:]), count, **options).to(conv.weight.dtype)
    conv.weight[:count] = (filters * norm / math.sqrt(in_channels)).unsqueeze(1).expand(-1, in_channels, -1, -1, -1)
