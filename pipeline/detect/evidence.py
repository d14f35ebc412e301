"""Evidence a bundle may fuse besides its densities, computed from the clip in the classifier's forward pass.

Each is a per-clip score, higher = more in-distribution, keyed like the densities' ``"layer/density"``:

* ``heatmap/mean`` (:data:`HEATMAP_KEY`): minus the mean of the bundle's OOD heatmap
  (:mod:`pipeline.detect.zoo.heatmap`), from the maps the forward pass leaves behind: how much of the clip a decoder
  trained on generic local corruptions finds changed.
* ``border/consistency`` (:data:`BORDER_KEY`): how well the prediction survives masking the clip's border,
  ``sum_c p_c log q_c`` with ``p`` the softmax of the clip and ``q`` that of the same clip with a band of
  ``border`` pixels along every edge of the model input set to the dataset mean (zero after normalisation). No
  change confined to that band (a painted frame no wider than it) can move ``q``, so a frame that changes the
  prediction leaves ``p`` on a class ``q`` does not support, and the score falls *whatever the attacker knows*: the
  attacker's only freedom is which wrong class to push ``p`` to. A clip whose action stays away from the band keeps
  ``p`` close to ``q``. It costs a second forward pass, and it says nothing about changes inside the band's inner
  edge (a wider frame, a patch, a perturbation of the whole frame).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

HEATMAP_KEY = "heatmap/mean"
BORDER_KEY = "border/consistency"
EVIDENCE_KEYS = (HEATMAP_KEY, BORDER_KEY)
BORDER_FRACTION = 0.05
"""Default masked band, as a fraction of the model input's side (4 px at 80, 6 px at 112)."""


def default_border(crop: int) -> int:
    """The masked band for a ``crop``-pixel model input: :data:`BORDER_FRACTION` of its side, at least 1 px."""
    return max(1, round(BORDER_FRACTION * crop))


def mask_border(inputs: torch.Tensor, width: int) -> torch.Tensor:
    """A copy of normalised ``(B, C, T, H, W)`` input with a ``width``-pixel band along every edge set to zero (the
    dataset mean); the input is not modified, and the copy stays in its autograd graph. ValueError unless
    ``1 <= width`` and the band leaves an inside."""
    if not 1 <= width or 2 * width >= min(inputs.shape[-2:]):
        raise ValueError(f"a border band of {width} px leaves nothing inside a {tuple(inputs.shape[-2:])} input")
    inside = torch.zeros(inputs.shape[-2:], dtype=inputs.dtype, device=inputs.device)
    inside[width:-width, width:-width] = 1
    return inputs * inside


def border_consistency(model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor, width: int) -> torch.Tensor:
    """``sum_c p_c log q_c`` per clip ``(B,)`` float64 (see the module docstring); ``logits`` are the model's on
    ``inputs``. Differentiable when grad mode is on."""
    log_q = torch.log_softmax(_float64(model(mask_border(inputs, width))), dim=1)
    return (torch.softmax(_float64(logits), dim=1) * log_q).sum(dim=1)


def _float64(values: torch.Tensor) -> torch.Tensor:
    """``values`` in float64, on the CPU where the device has none (MPS); differentiable."""
    return values.to("cpu" if values.device.type == "mps" else values.device, torch.float64)


@dataclass(frozen=True)
class Evidence:
    """Which evidence to compute in a forward pass: ``keys`` among :data:`EVIDENCE_KEYS`, the bundle's heatmap
    decoder (needed for ``heatmap/mean``, optional otherwise: its maps colour alert thumbnails) and the masked
    ``border`` in pixels (needed for ``border/consistency``)."""

    keys: tuple[str, ...] = ()
    heatmap: object | None = None
    border: int = 0

    def __post_init__(self) -> None:
        unknown = [k for k in self.keys if k not in EVIDENCE_KEYS]
        if unknown:
            raise ValueError(f"unknown evidence {unknown}; known: {list(EVIDENCE_KEYS)}")
        if HEATMAP_KEY in self.keys and self.heatmap is None:
            raise ValueError(f"{HEATMAP_KEY} needs the bundle's heatmap decoder")
        if BORDER_KEY in self.keys and int(self.border) < 1:
            raise ValueError(f"{BORDER_KEY} needs a masked border of at least 1 px, got {self.border!r}")

    def forward(self, model: nn.Module, tap, inputs: torch.Tensor, *, maps: bool = False):
        """``tap(inputs)`` plus the evidence: ``(logits, features, {key: (B,) float64}, heat)``, where ``heat`` is
        the ``(B, H, W)`` heatmap when ``maps`` is asked for or fused (and a decoder is there), else None. Runs under
        inference mode unless the tap keeps gradients (``tap.enable_grad``)."""
        want_heat = self.heatmap is not None and (maps or HEATMAP_KEY in self.keys)
        with contextlib.nullcontext() if tap.enable_grad else torch.inference_mode():
            if not want_heat:
                logits, features = tap(inputs)
                heat = None
            else:
                with self.heatmap.capturing(model) as captured:
                    logits, features = tap(inputs)
                heat = self.heatmap.decode_tensor(captured, logits, inputs)
            scores = {}
            if HEATMAP_KEY in self.keys:
                scores[HEATMAP_KEY] = -_float64(heat).mean(dim=(1, 2))
            if BORDER_KEY in self.keys:
                scores[BORDER_KEY] = border_consistency(model, inputs, logits, int(self.border))
        return logits, features, scores, heat
