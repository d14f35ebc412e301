"""Average pooling of conv feature maps before density modelling (the paper's factor-4 pooling)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.density.errors import DensityError


def pool_features(features: torch.Tensor | np.ndarray, factor: int = 4) -> torch.Tensor | np.ndarray:
    """Average-pool the trailing spatial/temporal axes of ``(N, C, *dims)`` by ``factor``, then flatten to ``(N, D)``.

    Each axis uses a window of ``min(factor, size)`` (ceil mode, so no border is dropped); ``(N, D)`` input is
    returned flattened as is. Returns the same kind (numpy or torch) it was given.
    """
    if factor < 1:
        raise DensityError(f"pool factor must be >= 1, got {factor}")
    as_numpy = isinstance(features, np.ndarray)
    x = torch.from_numpy(features) if as_numpy else features
    if x.ndim < 2:
        raise DensityError(f"features must be (N, C, ...) with a batch axis, got shape {tuple(x.shape)}")
    spatial = x.shape[2:]
    if spatial and factor > 1:
        kernel = tuple(min(factor, s) for s in spatial)
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(len(spatial))
        if pool is None:
            raise DensityError(f"cannot pool {len(spatial)} trailing axes (1-3 supported), shape {tuple(x.shape)}")
        x = pool(x, kernel_size=kernel, stride=kernel, ceil_mode=True)
    out = x.reshape(x.shape[0], -1)
    return out.numpy() if as_numpy else out
