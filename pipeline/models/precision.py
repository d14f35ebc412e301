"""Numeric precision of a model's forward pass: fp32, or bf16 weights in the channels-last-3d layout where the
hardware runs them fast (AMX / AVX-512-BF16 CPUs, CUDA), chosen once and applied to a copy of the model.

``prepare_for_inference(model, "auto")`` returns the prepared copy and its ``to_input``: float32 ``N×C×T×H×W``
batches to the dtype, memory format and device the copy takes. The copy also converts its input itself (a forward
pre-hook) and returns float32 logits (a forward hook), so code that calls it like the original, feature taps and
attacks' gradients included, works unchanged; taps see bf16 layer outputs and pool them in float32. Densities and
calibration stay float64 on the CPU whatever the precision: only the backbone's arithmetic changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from pipeline.models.errors import ModelError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
"""Names ``--precision`` and ``classifier.precision`` accept; ``auto`` resolves per machine (:func:`resolve_precision`)."""

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX-512-BF16); oneDNN then beats fp32 with it."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """The concrete precision (``fp32``, ``bf16`` or ``fp16``) ``precision`` means on ``device``.

    ``auto``: bf16 on a CPU with fast bf16 and on CUDA devices that support it (else fp16 there), fp32 elsewhere.
    ModelError for an unknown name or fp16 on a CPU (no fast fp16 convolutions there).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ModelError("precision fp16 is for CUDA devices; on a CPU use bf16 (or auto)")
    return precision


def input_converter(model: nn.Module, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function taking a float batch to the dtype and device of ``model``'s parameters (read at each call, so a
    later ``.to()`` of the model is followed), channels-last-3d for 5-D batches if asked."""
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format

    def to_input(batch: torch.Tensor) -> torch.Tensor:
        reference = next(model.parameters(), None)
        if reference is not None:
            batch = batch.to(device=reference.device, dtype=reference.dtype)
        return batch.contiguous(memory_format=layout) if batch.ndim == 5 else batch

    return to_input


def prepare_for_inference(model: nn.Module, precision: str = "fp32", *,
                          device: torch.device | str | None = None) -> tuple[nn.Module, Callable]:
    """``(prepared, to_input)``: a copy of ``model`` in eval mode at ``precision`` on ``device`` (default: where the
    model is), and the conversion of float32 batches to what it takes. ``fp32`` returns the model itself, in eval
    mode on the device. The prepared model's ``clipwatch_precision`` attribute names the precision it runs in; a
    model already prepared in another precision is refused (prepare the original again)."""
    current = getattr(model, "clipwatch_precision", None)
    if current not in (None, "fp32"):
        if resolve_precision(precision, device or next(model.parameters()).device) == current:
            return model, model.clipwatch_to_input
        raise ModelError(f"the model was prepared for {current} already; prepare the original model instead")
    if device is None:
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    concrete = resolve_precision(precision, device)
    if concrete == "fp32":
        prepared = model.to(device).eval()
        to_input = input_converter(prepared, channels_last=False)
    else:
        dtype = _DTYPES[concrete]
        prepared = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
        prepared = prepared.to(memory_format=torch.channels_last_3d)
        to_input = input_converter(prepared, channels_last=True)
        prepared.register_forward_pre_hook(lambda module, args: (to_input(args[0]), *args[1:]))
        prepared.register_forward_hook(lambda module, args, output: output.float()
                                       if isinstance(output, torch.Tensor) else output)
    prepared.clipwatch_precision = concrete
    prepared.clipwatch_to_input = to_input
    return prepared, to_input


def model_precision(model: nn.Module) -> str:
    """The precision a model prepared by :func:`prepare_for_inference` runs in (``fp32`` for any other model)."""
    return getattr(model, "clipwatch_precision", "fp32")
