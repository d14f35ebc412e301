"""Name → constructor registry of clipwatch's video backbones, with the layers worth tapping for each."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from pipeline.models.c3d import C3D
from pipeline.models.errors import UnknownModelError
from pipeline.models.pytorchvideo import DEFAULT_LAYERS, HUB, build_hub_model
from pipeline.models.resnet3d import ResNet3D

RESNET_LAYERS = ("layer2", "layer3", "avgpool", "fc")
C3D_LAYERS = ("conv4b", "conv5b", "fc7", "fc8")


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and which layers its feature taps read by default."""

    name: str
    builder: Callable[..., nn.Module]
    default_layers: tuple[str, ...]
    description: str

    def options(self) -> dict[str, Any]:
        """Keyword options of the builder with their defaults (``num_classes`` excluded)."""
        parameters = inspect.signature(self.builder).parameters
        return {
            key: p.default
            for key, p in parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }


_SPECS: dict[str, ModelSpec] = {
    "c3d": ModelSpec("c3d", C3D, C3D_LAYERS, "C3D (Tran et al. 2015), 3x16x112x112 reference input"),
    **{
        f"r3d-{depth}": ModelSpec(
            f"r3d-{depth}",
            partial(ResNet3D, depth),
            RESNET_LAYERS,
            f"3D ResNet-{depth} (Hara et al. layout, shortcut B), any input size",
        )
        for depth in (10, 18, 34, 50, 101)
    },
    **{
        name: ModelSpec(name, partial(build_hub_model, name), DEFAULT_LAYERS[entry.module],
                        f"pytorchvideo {name} ({entry.clip_len}x{entry.crop}x{entry.crop}; extra clipwatch[pytorchvideo])")
        for name, entry in HUB.items()
    },
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; raises :class:`UnknownModelError` listing the known names."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(_SPECS)}") from None


def default_layers(name: str) -> list[str]:
    """Layers a feature tap reads by default for architecture ``name`` (deepest last)."""
    return list(model_spec(name).default_layers)


def build_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs; ``options`` go to its constructor.

    Raises :class:`UnknownModelError` for an unknown name or option (the message lists the valid ones).
    """
    spec = model_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UnknownModelError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    valid = spec.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UnknownModelError(f"{name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return spec.builder(num_classes, **options)
