"""3D ResNets laid out exactly as Hara et al.'s 3D-ResNets-PyTorch (``models/resnet.py``), so their checkpoints load.

Module names: ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1``…``layer4`` (``BasicBlock`` or ``Bottleneck``
blocks with a ``downsample = Sequential(conv1x1x1, BatchNorm3d)`` shortcut, type B), ``avgpool`` (adaptive, so
any clip size works) and ``fc``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.errors import InputShapeError, UnknownModelError

STAGE_MULTIPLIERS = (1, 2, 4, 8)


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3×3 convolutions with an identity (or projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)

    def last_bn(self) -> nn.BatchNorm3d:
        return self.bn2


class Bottleneck(nn.Module):
    """1×1×1 reduce, 3×3×3, 1×1×1 expand (×4), with an identity (or projection) shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)

    def last_bn(self) -> nn.BatchNorm3d:
        return self.bn3


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut (Hara's type A): subsample by ``stride``, then zero-pad the new channels."""

    def __init__(self, out_planes: int, stride: int) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.out_planes - out.shape[1]))


Block = type[BasicBlock] | type[Bottleneck]

DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet3D(nn.Module):
    """Hara et al.'s 3D ResNet (shortcut B by default), with options for small CPU variants.

    Args:
        depth: 10, 18, 34 (basic blocks), 50 or 101 (bottlenecks).
        num_classes: size of ``fc``.
        width: base width; the stages use ``width * (1, 2, 4, 8)`` channels (reference 64).
        widen_factor: Hara's extra multiplier on the stage widths.
        conv1_t_size: temporal kernel of ``conv1`` (its spatial kernel is 7×7).
        conv1_t_stride: temporal stride of ``conv1``.
        no_max_pool: skip ``maxpool`` (Hara's option for short clips).
        shortcut_type: ``"B"`` (1×1×1 conv + BN projection) or ``"A"`` (zero padding, no parameters).
        zero_init_residual: start each block's last BN at gamma 0, so every residual branch starts as the
            identity; helps training from scratch.
        in_channels: input channels.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        *,
        width: int = 64,
        widen_factor: float = 1.0,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        shortcut_type: Literal["A", "B"] = "B",
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise UnknownModelError(f"ResNet3D depth must be one of {sorted(DEPTHS)}, got {depth}")
        if shortcut_type not in ("A", "B"):
            raise UnknownModelError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
        block, blocks_per_stage = DEPTHS[depth]
        planes = [int(width * multiplier * widen_factor) for multiplier in STAGE_MULTIPLIERS]
        self.in_channels = in_channels
        self.no_max_pool = no_max_pool
        self.in_planes = planes[0]
        self.conv1 = nn.Conv3d(
            in_channels,
            self.in_planes,
            kernel_size=(conv1_t_size, 7, 7),
            stride=(conv1_t_stride, 2, 2),
            padding=(conv1_t_size // 2, 3, 3),
            bias=False,
        )
        self.bn1 = nn.BatchNorm3d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], blocks_per_stage[0], shortcut_type)
        self.layer2 = self._make_layer(block, planes[1], blocks_per_stage[1], shortcut_type, stride=2)
        self.layer3 = self._make_layer(block, planes[2], blocks_per_stage[2], shortcut_type, stride=2)
        self.layer4 = self._make_layer(block, planes[3], blocks_per_stage[3], shortcut_type, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(
        self, block: Block, planes: int, blocks: int, shortcut_type: str, stride: int = 1
    ) -> nn.Sequential:
        downsample: nn.Module | None = None
        out_planes = planes * block.expansion
        if stride != 1 or self.in_planes != out_planes:
            if shortcut_type == "A":
                downsample = ZeroPadShortcut(out_planes, stride)
            else:
                downsample = nn.Sequential(conv1x1x1(self.in_planes, out_planes, stride), nn.BatchNorm3d(out_planes))
        layers = [block(self.in_planes, planes, stride=stride, downsample=downsample)]
        self.in_planes = out_planes
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn().weight)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, T, H, W)`` clips of any size to ``(N, num_classes)`` logits."""
        if clips.ndim != 5 or clips.shape[1] != self.in_channels:
            raise InputShapeError(
                f"ResNet3D expects clips of shape (N, {self.in_channels}, T, H, W), got {tuple(clips.shape)}"
            )
        x = self.relu(self.bn1(self.conv1(clips)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        return self.fc(x.flatten(1))
