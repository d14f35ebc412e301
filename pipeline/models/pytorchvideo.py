"""pytorchvideo backbones by their hub names (optional extra ``clipwatch[pytorchvideo]``).

``x3d_xs``, ``x3d_s``, ``x3d_m``, ``slow_r50`` and ``r2plus1d_r50`` are built by ``pytorchvideo.models`` with the
configuration of pytorchvideo's hub entries, the head's softmax removed (clipwatch reads logits), and registered in
:mod:`pipeline.models.registry` like clipwatch's own architectures, so that ``train``, ``fit``, ``evaluate`` and the
workers use them unchanged; layers are tapped by module path (``blocks.4``). Only ``pytorchvideo.models`` is
imported: ``pytorchvideo.transforms`` does not import with torchvision 0.17 or later. Weights come from the user
(``--init pytorchvideo:x3d_s:/path/to/checkpoint.pyth``, read with ``weights_only=True``), never from a hub.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from pipeline.models.errors import UnknownModelError

KINETICS_MEAN_PTV = (0.45, 0.45, 0.45)
KINETICS_STD_PTV = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class HubModel:
    """One hub entry: the ``pytorchvideo.models`` builder, its arguments, and the input it was trained on."""

    module: str
    builder: str
    arguments: dict[str, Any]
    clip_len: int
    frame_step: int
    short_side: int
    crop: int

    def preprocessing(self) -> dict[str, Any]:
        return {"clip_len": self.clip_len, "frame_step": self.frame_step, "short_side": self.short_side,
                "crop": self.crop, "mean": KINETICS_MEAN_PTV, "std": KINETICS_STD_PTV}


HUB: dict[str, HubModel] = {
    "x3d_xs": HubModel("x3d", "create_x3d", {"input_clip_length": 4, "depth_factor": 2.2}, 4, 12, 182, 182),
    "x3d_s": HubModel("x3d", "create_x3d", {"input_clip_length": 13, "depth_factor": 2.2}, 13, 6, 182, 182),
    "x3d_m": HubModel("x3d", "create_x3d", {"input_clip_length": 16, "depth_factor": 2.2}, 16, 5, 256, 256),
    "slow_r50": HubModel("resnet", "create_resnet", {"stem_conv_kernel_size": (1, 7, 7),
                                                     "head_pool_kernel_size": (8, 7, 7), "model_depth": 50},
                         8, 8, 256, 224),
    "r2plus1d_r50": HubModel("r2plus1d", "create_r2plus1d", {"dropout_rate": 0.5}, 16, 4, 256, 224),
}
"""Hub names -> builders and inputs (pytorchvideo's ``hub`` module and its model-zoo transforms)."""

DEFAULT_LAYERS = {"x3d": ("blocks.3", "blocks.4", "blocks.5"), "resnet": ("blocks.3", "blocks.4", "blocks.5"),
                  "r2plus1d": ("blocks.3", "blocks.4", "blocks.5")}


def import_models(module: str):
    """``pytorchvideo.models.<module>``, or a one-line error saying how to install the extra."""
    try:
        return importlib.import_module(f"pytorchvideo.models.{module}")
    except ImportError as error:
        raise UnknownModelError(f"pytorchvideo models need the extra: pip install 'clipwatch[pytorchvideo]' "
                                f"({error})") from None


def build_hub_model(name: str, num_classes: int, *, crop: int | None = None, clip_len: int | None = None) -> nn.Module:
    """Hub model ``name`` with ``num_classes`` outputs, for clips of ``clip_len`` frames cropped to ``crop`` pixels
    (default: the hub's), returning logits."""
    entry = HUB[name]
    arguments = dict(entry.arguments)
    if entry.module == "x3d":
        arguments.update(input_crop_size=crop or entry.crop, input_clip_length=clip_len or entry.clip_len)
    elif crop is not None or clip_len is not None:  # the head's pool covers the last stage's map exactly
        frames, size = clip_len or entry.clip_len, crop or entry.crop
        if entry.module == "resnet":
            arguments["head_pool_kernel_size"] = (frames, size // 32, size // 32)
        else:  # R(2+1)D strides 2 in time in its last two stages
            arguments["head_pool_kernel_size"] = (max(frames // 4, 1), size // 32, size // 32)
    builder = getattr(import_models(entry.module), entry.builder)
    return builder(model_num_class=num_classes, head_activation=None, **arguments)
