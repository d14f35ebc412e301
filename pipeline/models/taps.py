"""Feature taps: one forward pass returns the logits and pooled, flattened outputs of named layers.

Works on any ``nn.Module`` through forward hooks on ``model.get_submodule(name)``; conv maps are average-pooled
by :func:`pipeline.density.pooling.pool_features` right inside the hook, so later in-place ops cannot alter them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pipeline.density.pooling import pool_features
from pipeline.models.errors import ModelError, UnknownLayerError


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``model`` (in registration order), usable as tap layers."""
    return [name for name, _ in model.named_modules() if name]


class FeatureTap:
    """Read named intermediate outputs of ``model`` during its forward pass.

    ``tap(clips)`` returns ``(logits, {layer: Tensor(B, D)})`` in float32, in the order of ``layers``; each
    output is pooled by ``pool_factor`` over its trailing axes (``(B, D)`` outputs pass through) and flattened.
    By default the pass runs under ``torch.inference_mode()``; with ``enable_grad=True`` the logits and
    features stay in the autograd graph (for attacks that backpropagate through them). Use it as a context
    manager, or call :meth:`close`, to remove the hooks; they capture nothing outside a tap call. Put the
    model in ``eval()`` mode yourself for inference.

    Example:
        >>> with FeatureTap(model, ["layer4", "fc"]) as tap:
        ...     logits, features = tap(clips)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        pool_factor: int = 4,
        *,
        enable_grad: bool = False,
    ) -> None:
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise UnknownLayerError("FeatureTap needs at least one layer name")
        if len(set(layers)) != len(layers):
            raise UnknownLayerError(f"FeatureTap layer names repeat: {list(layers)}")
        if pool_factor < 1:
            raise ModelError(f"pool_factor must be >= 1, got {pool_factor}")
        self.model = model
        self.layers = list(layers)
        self.pool_factor = pool_factor
        self.enable_grad = enable_grad
        self._captured: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles: list[RemovableHandle] = []
        modules = {name: self._resolve(name) for name in self.layers}
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _resolve(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            parent, nearest = "", self.model
            for part in name.split("."):
                child = getattr(nearest, "_modules", {}).get(part)
                if child is None:
                    break
                parent, nearest = f"{parent}.{part}" if parent else part, child
            children = [key for key, child in nearest._modules.items() if child is not None]
            choices = [f"{parent}.{key}" if parent else key for key in children]
            raise UnknownLayerError(
                f"{type(self.model).__name__} has no layer {name!r}; available"
                f"{f' under {parent!r}' if parent else ''}: {', '.join(choices) or '(none)'} "
                f"({len(layer_names(self.model))} submodules in all, see layer_names(model))"
            ) from None

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def capture(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active:
                return
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"layer {name!r} returned {type(output).__name__}, a tap needs a tensor output")
            if name in self._captured:
                raise ModelError(
                    f"layer {name!r} ran more than once in one forward pass (a shared module); tap one that runs once"
                )
            pooled = pool_features(output.float(), self.pool_factor)
            if _shares_memory(pooled, output):
                pooled = pooled.clone()
            self._captured[name] = pooled

        return capture

    def __call__(self, clips: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run ``model(clips)`` once; return ``(logits, {layer: (B, D) float32 features})``."""
        if not self._handles:
            raise ModelError("FeatureTap is closed; create a new one")
        self._captured, self._active = {}, True
        grad_mode = torch.enable_grad() if self.enable_grad else torch.inference_mode()
        try:
            with grad_mode:
                logits = self.model(clips)
        finally:
            captured, self._captured, self._active = self._captured, {}, False
        if not isinstance(logits, torch.Tensor):
            raise ModelError(f"{type(self.model).__name__} returned {type(logits).__name__}, expected logits tensor")
        missing = [name for name in self.layers if name not in captured]
        if missing:
            raise ModelError(
                f"layer(s) {', '.join(missing)} did not run in {type(self.model).__name__}'s forward pass"
            )
        return logits.float(), {name: captured[name] for name in self.layers}

    def close(self) -> None:
        """Remove the hooks from the model (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
