"""Forward throughput (clips/s) of every registry model at batch 1 and 8, measured side by side in one run.

Also prints GMACs per clip (counted with hooks on Conv3d/Linear) and two ratios: batch-8 over batch-1 throughput,
and each model's batch-1 throughput relative to the first row. The last row is the small CPU variant
(``r3d-18`` with ``width=16`` at 16×64×64) unless ``--no-small``.

    .venv/bin/python benchmarks/model_forward.py                       # full models, 16x112x112
    .venv/bin/python benchmarks/model_forward.py --width 16 --size 16 64 64 --iters 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pipeline.models import available_models, build_model


@dataclass(frozen=True)
class Case:
    name: str
    options: dict
    size: tuple[int, int, int]

    @property
    def label(self) -> str:
        extras = ",".join(f"{key}={value}" for key, value in self.options.items())
        return f"{self.name}" + (f"[{extras}]" if extras else "") + " @" + "x".join(map(str, self.size))


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [Case(name, model_options(name, args.width), tuple(args.size)) for name in args.models]
    if not args.no_small:
        cases.append(Case("r3d-18", {"width": 16}, (16, 64, 64)))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"iters>={args.iters}, min-time={args.min_time}s, warmup={args.warmup}"
    )
    rows = []
    for case in tqdm(cases, desc="models", unit="model"):
        torch.manual_seed(0)
        model = build_model(case.name, args.num_classes, **case.options).eval()
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, torch.randn(1, 3, *case.size))
        rates = {
            batch: clips_per_second(model, torch.randn(batch, 3, *case.size), args.iters, args.warmup, args.min_time)
            for batch in args.batches
        }
        rows.append((case, params, macs, rates))
        del model
    first_rate = rows[0][3][args.batches[0]]
    header = f"{'model':<44}{'params':>10}{'GMAC/clip':>11}" + "".join(f"{f'clips/s@{b}':>13}" for b in args.batches)
    header += f"{f'@{args.batches[-1]}/@{args.batches[0]}':>9}{'vs row 1':>10}"
    print(header)
    for case, params, macs, rates in rows:
        line = f"{case.label:<44}{params / 1e6:>9.2f}M{macs / 1e9:>11.2f}"
        line += "".join(f"{rates[b]:>13.2f}" for b in args.batches)
        line += f"{rates[args.batches[-1]] / rates[args.batches[0]]:>9.2f}{rates[args.batches[0]] / first_rate:>10.2f}"
        print(line)


if __name__ == "__main__":
    main()
