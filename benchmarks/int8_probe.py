"""int8 by PyTorch 2 export quantisation (torchao's X86InductorQuantizer, static, calibrated on 4 batches, then
torch.compile) against fp32 and bf16 + channels-last-3d, for the shipped default and a full-width r3d-18, side by side.

torchao is not a clipwatch dependency (int8 was not kept); run this in its own environment:

    python3 -m venv /tmp/qenv && /tmp/qenv/bin/pip install torch==2.13.0 && /tmp/qenv/bin/pip install torchao -e .
    /tmp/qenv/bin/python benchmarks/int8_probe.py
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the checkout's pipeline, not this folder

import torch  # noqa: E402
import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq  # noqa: E402
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402

from pipeline.models import build_model, load_model  # noqa: E402
from pipeline.models.precision import prepare_for_inference  # noqa: E402

warnings.filterwarnings("ignore")


def rate(fn, x: torch.Tensor, n: int = 5) -> float:
    """Clips/s of ``fn`` over batch ``x`` (2 warm-up calls, ``n`` timed)."""
    with torch.no_grad():
        fn(x)
        fn(x)
        start = time.perf_counter()
        for _ in range(n):
            fn(x)
    return n * len(x) / (time.perf_counter() - start)


def int8_model(model: torch.nn.Module, x: torch.Tensor, calibration: list[torch.Tensor]):
    """The model exported, quantised to int8 (weights per channel, activations calibrated) and compiled."""
    exported = torch.export.export(model, (x,)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return torch.compile(convert_pt2e(prepared))


def main() -> None:
    torch.set_num_threads(2)
    cases = {
        "shipped default": (load_model("default")[0], (3, 16, 80, 80), 32),
        "full-width r3d-18": (build_model("r3d-18", num_classes=10), (3, 16, 112, 112), 8),
    }
    for label, (model, shape, batch) in cases.items():
        model.eval()
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=generator)
        calibration = [torch.randn(batch, *shape, generator=generator) for _ in range(4)]
        with torch.no_grad():
            reference = model(x).argmax(1)
        fp32 = rate(model, x)
        prepared, to_input = prepare_for_inference(model, "bf16")
        bf16 = rate(lambda v, m=prepared, f=to_input: m(f(v)), x)
        start = time.perf_counter()
        try:
            quantised = int8_model(model, x, calibration)
            with torch.no_grad():
                agree = float((quantised(x).argmax(1) == reference).float().mean())
        except Exception as error:  # a probe: report why int8 does not apply and go on
            print(f"{label}: fp32 {fp32:.1f}, bf16 {bf16:.1f} clips/s; int8 failed after "
                  f"{time.perf_counter() - start:.0f} s: {type(error).__name__}: {str(error)[:300]}", flush=True)
            continue
        setup = time.perf_counter() - start
        int8 = rate(quantised, x)
        print(f"{label}: fp32 {fp32:.1f}, bf16 {bf16:.1f}, int8 {int8:.1f} clips/s (bf16/fp32 {bf16 / fp32:.2f}x, "
              f"int8/fp32 {int8 / fp32:.2f}x), int8 argmax = fp32 on {agree:.3f} of the clips, quantise + compile "
              f"{setup:.0f} s", flush=True)


if __name__ == "__main__":
    main()
