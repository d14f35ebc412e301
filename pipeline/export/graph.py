"""The graph that is exported: a classifier whose tapped layers are extra outputs, pooled as the bundle expects.

``TappedGraph(model, layers, pool_factor, input_shape)(clips)`` returns ``(logits, *features)``, each feature the
``(B, D)`` output of :class:`pipeline.models.FeatureTap` for that layer, so an ONNX runtime hands the densities
exactly what they were fitted on and nothing but onnxruntime and numpy is needed to run it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.errors import ModelError

INPUT_NAME = "clips"
LOGITS_NAME = "logits"
FEATURE_PREFIX = "features."
_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class TappedGraph(nn.Module):
    """``model`` with the outputs of ``layers`` average-pooled by ``pool_factor`` and flattened as extra outputs.

    :func:`pipeline.density.pool_features` takes its window from each map's shape (``min(factor, size)`` per
    axis); the TorchScript tracer cannot export a window computed from a traced shape, so the windows are fixed
    here from one dry run at ``input_shape`` (``(C, T, H, W)``: the exported input has a fixed clip size and a
    free batch). Each output is pooled inside its hook, as the tap does, so later in-place ops cannot alter it.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], pool_factor: int,
                 input_shape: Sequence[int]) -> None:
        super().__init__()
        if pool_factor < 1:
            raise ModelError(f"pool_factor must be >= 1, got {pool_factor}")
        self.model = model.eval()
        self.layers = list(layers)
        self.pool_factor = pool_factor
        shapes = self._layer_shapes(tuple(input_shape))
        self.windows = {name: tuple(min(pool_factor, size) for size in shape[2:]) for name, shape in shapes.items()}
        bad = [name for name, window in self.windows.items() if len(window) > 3]
        if bad:
            raise ModelError(f"cannot pool layer {bad[0]!r} of shape {shapes[bad[0]]} (1-3 trailing axes supported)")

    def _layer_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}

        def record(name: str):
            def hook(module: nn.Module, inputs, output) -> None:
                if not isinstance(output, torch.Tensor):
                    raise ModelError(f"layer {name!r} returned {type(output).__name__}, a tap needs a tensor output")
                shapes[name] = tuple(output.shape)
            return hook

        handles = [self.model.get_submodule(name).register_forward_hook(record(name)) for name in self.layers]
        try:
            with torch.inference_mode():
                self.model(torch.zeros((1, *input_shape)))
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.layers if name not in shapes]
        if missing:
            raise ModelError(f"layer(s) {', '.join(missing)} did not run in {type(self.model).__name__}'s forward pass")
        return shapes

    def _pool(self, name: str, output: torch.Tensor) -> torch.Tensor:
        window = self.windows[name]
        output = output.float()
        if window and self.pool_factor > 1:  # the same condition and call as pool_features
            output = _POOLS[len(window)](output, kernel_size=window, stride=window, ceil_mode=True)
        return output.flatten(1)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured: dict[str, torch.Tensor] = {}

        def capture(name: str):
            return lambda module, inputs, output: captured.__setitem__(name, self._pool(name, output))

        handles = [self.model.get_submodule(name).register_forward_hook(capture(name)) for name in self.layers]
        try:
            logits = self.model(clips)
        finally:
            for handle in handles:
                handle.remove()
        return (logits.float(), *(captured[name] for name in self.layers))

    def output_names(self) -> list[str]:
        """The ONNX output names, in order: the logits, then ``features.<layer>`` per tapped layer."""
        return [LOGITS_NAME, *(f"{FEATURE_PREFIX}{name}" for name in self.layers)]

    def export(self, path: str | Path, input_shape: Sequence[int], *, opset: int) -> None:
        """Write the ONNX graph to ``path`` with a dynamic batch axis (TorchScript exporter: no onnxscript needed)."""
        names = [INPUT_NAME, *self.output_names()]
        example = torch.zeros((2, *input_shape))
        with warnings.catch_warnings():
            # the legacy exporter announces its deprecation, and the tracer warns about the model's input checks
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(self, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=names[1:],
                              dynamic_axes={name: {0: "batch"} for name in names}, do_constant_folding=True)
