"""C3D (Tran et al., ICCV 2015): eight 3×3×3 convolutions, five max-pools and three fully connected layers.

The default layout is the reference network for 3×16×112×112 clips: pool5 yields 512×1×4×4 = 8192 features for
fc6 (pool5 pads H and W by one, as Caffe's ceil-mode pooling did), so published C3D weights fit unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.errors import InputShapeError

REFERENCE_INPUT = (3, 16, 112, 112)
POOL5_GRID = (1, 4, 4)


class C3D(nn.Module):
    """C3D with named submodules ``conv1a``, ``pool1``, …, ``conv5b``, ``pool5``, ``fc6``, ``fc7``, ``fc8``.

    ``relu`` and ``dropout`` are shared, so tapping ``fc6`` or ``fc7`` yields the pre-activation output.

    Args:
        num_classes: size of ``fc8``.
        width: channels of ``conv1a``; later stages use ``width * (2, 4, 4, 8, 8, 8, 8)`` (reference 64).
        fc_dim: width of ``fc6`` and ``fc7`` (reference 4096).
        dropout: drop probability after ``fc6`` and ``fc7``.
        adaptive_pool: let pool5 keep partial windows and resample its output to 1×4×4, so clips of other
            sizes (from 8×32×32) work; at the reference input both are the identity, so weights and outputs
            match the plain network.
        in_channels: input channels.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 64,
        fc_dim: int = 4096,
        dropout: float = 0.5,
        adaptive_pool: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 8 * width
        self.in_channels = in_channels
        self.conv1a = _conv(in_channels, c1)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2a = _conv(c1, c2)
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv3a = _conv(c2, c3)
        self.conv3b = _conv(c3, c3)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv4a = _conv(c3, c4)
        self.conv4b = _conv(c4, c4)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv5a = _conv(c4, c4)
        self.conv5b = _conv(c4, c4)
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1), ceil_mode=adaptive_pool)
        self.adaptive_pool = nn.AdaptiveAvgPool3d(POOL5_GRID) if adaptive_pool else None
        grid = POOL5_GRID[0] * POOL5_GRID[1] * POOL5_GRID[2]
        self.fc6 = nn.Linear(c4 * grid, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.fc8 = nn.Linear(fc_dim, num_classes)
        self.dropout = nn.Dropout(p=dropout)
        self.relu = nn.ReLU(inplace=True)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, T, H, W)`` clips to ``(N, num_classes)`` logits."""
        if clips.ndim != 5 or clips.shape[1] != self.in_channels:
            raise InputShapeError(
                f"C3D expects clips of shape (N, {self.in_channels}, T, H, W), got {tuple(clips.shape)}"
            )
        x = self.pool1(self.relu(self.conv1a(clips)))
        x = self.pool2(self.relu(self.conv2a(x)))
        x = self.pool3(self.relu(self.conv3b(self.relu(self.conv3a(x)))))
        x = self.pool4(self.relu(self.conv4b(self.relu(self.conv4a(x)))))
        x = self.relu(self.conv5b(self.relu(self.conv5a(x))))
        x = self.pool5(x)
        if self.adaptive_pool is not None:
            x = self.adaptive_pool(x)
        x = x.flatten(1)
        if x.shape[1] != self.fc6.in_features:
            raise InputShapeError(
                f"C3D input {tuple(clips.shape[1:])} gives {x.shape[1]} pool5 features, fc6 needs "
                f"{self.fc6.in_features} (reference input {REFERENCE_INPUT}); build with adaptive_pool=True "
                "for other sizes"
            )
        x = self.dropout(self.relu(self.fc6(x)))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


def _conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
