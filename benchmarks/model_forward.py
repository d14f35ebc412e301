"""Forward throughput (clips/s) of every registry model at batch 1 and 8, in each precision, side by side in one run.

Each model runs as ``prepare_for_inference`` makes it for every ``--precisions`` entry (default fp32 and, where the
CPU multiplies bf16 in hardware, bf16 + channels-last-3d). Also prints GMACs per clip (counted with hooks on
Conv3d/Linear), the batch-8 over batch-1 ratio, each row's speed over the same model in fp32, and whether every
clip's predicted class agrees with fp32. The extra rows are the shipped ``default`` model at its input size and
batch 32 (unless ``--no-shipped``) and the small CPU variant (``r3d-18`` width 16 at 16×64×64; ``--no-small``).

    .venv/bin/python benchmarks/model_forward.py                       # full models, 16x112x112
    .venv/bin/python benchmarks/model_forward.py --models r3d-18 --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # not benchmarks/pipeline.py

from pipeline.models import available_models, build_model, load_model
from pipeline.models.precision import cpu_has_fast_bf16, prepare_for_inference


@dataclass(frozen=True)
class Case:
    name: str
    options: dict
    size: tuple[int, int, int]
    shipped: str | None = None
    batches: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        extras = ",".join(f"{key}={value}" for key, value in self.options.items())
        name = f"shipped {self.shipped}" if self.shipped else self.name + (f"[{extras}]" if extras else "")
        return name + " @" + "x".join(map(str, self.size))

    def build(self, num_classes: int) -> nn.Module:
        torch.manual_seed(0)
        if self.shipped:
            return load_model(self.shipped)[0]
        return build_model(self.name, num_classes, **self.options).eval()


def count_macs(model: nn.Module, clips: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv3d and Linear layers for one forward pass of ``clips``."""
    total = 0

    def conv_hook(module: nn.Conv3d, inputs, output) -> None:
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = [
        module.register_forward_hook(conv_hook if isinstance(module, nn.Conv3d) else linear_hook)
        for module in model.modules()
        if isinstance(module, (nn.Conv3d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model(clips)
    finally:
        for handle in handles:
            handle.remove()
    return total // clips.shape[0]


def clips_per_second(model: nn.Module, clips: torch.Tensor, iters: int, warmup: int, min_time: float) -> float:
    """Batch size over the median pass time; at least ``iters`` passes and ``min_time`` seconds of them.

    The median resists interference from other processes on a shared CPU.
    """
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(clips)
        while len(times) < iters or sum(times) < min_time:
            start = time.perf_counter()
            model(clips)
            times.append(time.perf_counter() - start)
    return clips.shape[0] / statistics.median(times)


def model_options(name: str, width: int) -> dict:
    if width == 64:
        return {}
    return {"width": width, "adaptive_pool": True} if name == "c3d" else {"width": width}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=available_models(), choices=available_models())
    parser.add_argument("--width", type=int, default=64, help="base width (64 = reference models)")
    parser.add_argument("--size", type=int, nargs=3, default=(16, 112, 112), metavar=("T", "H", "W"))
    parser.add_argument("--batches", type=int, nargs="+", default=(1, 8))
    parser.add_argument("--iters", type=int, default=2, help="timed forward passes per batch size (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per batch size")
    parser.add_argument("--min-time", type=float, default=1.0, help="keep timing until this many seconds")
    parser.add_argument("--num-classes", type=int, default=101)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-small", action="store_true", help="skip the width-16 r3d-18 at 16x64x64")
    parser.add_argument("--no-shipped", action="store_true", help="skip the shipped default model")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"),
                        default=["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"],
                        help="precisions to compare (default: fp32, and bf16 where the CPU has AMX/AVX-512-BF16)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [Case(name, model_options(name, args.width), tuple(args.size)) for name in args.models]
    if not args.no_shipped:
        cases.append(Case("r3d-18", {}, (16, 80, 80), shipped="default", batches=(1, 32)))
    if not args.no_small:
        cases.append(Case("r3d-18", {"width": 16}, (16, 64, 64)))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"iters>={args.iters}, min-time={args.min_time}s, warmup={args.warmup}, precisions {args.precisions}"
    )
    rows = []
    for case in tqdm(cases, desc="models", unit="model"):
        model = case.build(args.num_classes)
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, torch.randn(1, 3, *case.size))
        batches = case.batches or tuple(args.batches)
        probe = torch.randn(max(batches), 3, *case.size)
        with torch.inference_mode():
            reference = model(probe).argmax(1)
        base: dict[int, float] = {}
        for precision in args.precisions:
            prepared, _ = prepare_for_inference(model, precision)
            rates = {batch: clips_per_second(prepared, torch.randn(batch, 3, *case.size), args.iters, args.warmup,
                                             args.min_time) for batch in batches}
            with torch.inference_mode():
                agree = float((prepared(probe).argmax(1) == reference).float().mean())
            base = rates if precision == "fp32" else base
            rows.append((case, precision, params, macs, rates, base, agree))
            del prepared
        del model
    header = (f"{'model':<34}{'prec':>6}{'params':>9}{'GMAC':>7}{'clips/s b1':>12}{'clips/s bN':>12}{'N':>4}"
              f"{'bN/b1':>7}{'vs fp32':>9}{'argmax=fp32':>13}")
    print(header)
    for case, precision, params, macs, rates, base, agree in rows:
        small, large = min(rates), max(rates)
        ratio = f"{rates[large] / base[large]:>9.2f}" if base else f"{'-':>9}"
        print(f"{case.label:<34}{precision:>6}{params / 1e6:>8.2f}M{macs / 1e9:>7.2f}{rates[small]:>12.2f}"
              f"{rates[large]:>12.2f}{large:>4}{rates[large] / rates[small]:>7.2f}{ratio}{agree:>13.3f}")


if __name__ == "__main__":
    main()
