"""A one-line progress report of a running pipeline every few seconds, read from its metrics (``clipwatch run``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from prometheus_client import Counter

from workers.ops.metrics import PipelineMetrics


def counter_total(counter: Counter, **labels: str) -> float:
    """The sum of a labelled counter's ``_total`` samples, restricted to ``labels``."""
    return sum(sample.value for metric in counter.collect() for sample in metric.samples
               if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()))


def progress_line(metrics: PipelineMetrics, seconds: float, scored_before: float = 0.0, interval: float = 0.0) -> str:
    """``"12 s: 240 clips decoded, 231 scored (normal 200, novel 20, adversarial 11), 3 alerts, 38.5 clips/s"``."""
    decoded = counter_total(metrics.clips)
    verdicts = {name: counter_total(metrics.verdicts, verdict=name) for name in ("normal", "novel", "adversarial")}
    scored = sum(verdicts.values())
    rate = f", {(scored - scored_before) / interval:.1f} clips/s" if interval > 0 else ""
    counts = ", ".join(f"{name} {count:.0f}" for name, count in verdicts.items())
    return (f"{seconds:.0f} s: {decoded:.0f} clips decoded, {scored:.0f} scored ({counts}), "
            f"{counter_total(metrics.alerts):.0f} alerts{rate}")


class ProgressReporter:
    """Writes `progress_line` to `out` every `interval_s` seconds from a daemon thread until `stop`."""

    def __init__(self, metrics: PipelineMetrics, out: TextIO, interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.metrics, self.out, self.interval_s, self.clock = metrics, out, interval_s, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> ProgressReporter:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = last = self.clock()
        scored = 0.0
        while not self._stop.wait(self.interval_s):
            now = self.clock()
            line = progress_line(self.metrics, now - started, scored, now - last)
            scored = sum(counter_total(self.metrics.verdicts, verdict=v) for v in ("normal", "novel", "adversarial"))
            last = now
            print(f"run: {line}", file=self.out, flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
