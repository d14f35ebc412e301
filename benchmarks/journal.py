"""Durable JSONL logs: one fsync per record against group commit (one fsync per batch), side by side in one run.

The sink writes every verdict to the verdict log and the health stage every stream event to the health log; both
are `JsonlJournal`s. Written one record at a time, each line costs an fsync; in a ``group_commit`` block the lines
are written at once and synced together when the batch ends (what the sink and health stages now do before they
acknowledge). Each round appends the same verdict-sized records to a fresh file in a temporary directory on the disk
under ``--dir``, once per mode, in alternating order; rates are medians over the rounds.

    .venv/bin/python benchmarks/journal.py [--records 2000] [--batch 16] [--rounds 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file would shadow the `pipeline` package it measures: look in the repository root first.
REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPOSITORY)

from pipeline.alerts.journal import JsonlJournal  # noqa: E402


def record(n: int) -> dict:
    """About the size of a verdict log line."""
    return {"clip_key": f"cam{n % 40}:{n}", "stream_id": f"cam{n % 40}", "seq": n, "verdict": "normal",
            "fused_score": 1.25, "p_value": 0.42, "reasons": [], "prediction": "MoveLeft", "prediction_index": 1,
            "softmax_max": 0.93, "log_likelihoods": {"layer2": -120.5, "layer3": -98.25, "avgpool": -40.0, "fc": -12.5},
            "clip_start": n * 0.64, "clip_end": n * 0.64 + 0.6, "label": None, "source": "bench",
            "model_id": "r3d-18@0123456789ab", "timestamps": {"decoder": 1.7e9 + n, "classifier": 1.7e9 + n + 0.1,
                                                              "density": 1.7e9 + n + 0.2}}


def rate(folder: Path, name: str, records: list[dict], batch: int) -> float:
    """Records per second appended to a new journal, `batch` per group commit (1: one fsync each)."""
    journal = JsonlJournal(folder / name)
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        if batch == 1:
            journal.append(records[start])
            continue
        with journal.group_commit():
            for one in records[start:start + batch]:
                journal.append(one)
    elapsed = time.perf_counter() - started
    journal.close()
    return len(records) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16, help="records per group commit (the sink's batches are "
                                                              "whatever is waiting, up to 64)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the files are written")
    args = parser.parse_args()
    records = [record(n) for n in range(args.records)]
    rates: dict[str, list[float]] = {"one fsync per record": [], f"group commit of {args.batch}": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        for round_ in range(args.rounds):
            order = [(1, "one fsync per record"), (args.batch, f"group commit of {args.batch}")]
            for batch, name in order if round_ % 2 == 0 else order[::-1]:
                rates[name].append(rate(folder, f"{round_}-{batch}.jsonl", records, batch))
    print(f"{args.records} verdict-sized records, {args.rounds} rounds, files under {args.dir}\n")
    print("| mode | records/s (median) | per record (ms) |")
    print("|---|---|---|")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"| {name} | {value:,.0f} | {1000 / value:.3f} |")
    single, grouped = medians.values()
    print(f"\ngroup commit / one fsync per record: {grouped / single:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
