"""``clipwatch demo``: four simulated cameras through the in-process pipeline, alerts live, then a report."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from pipeline.attacks import AdversarialFrame
from pipeline.config import PipelineConfig, parse_config
from pipeline.demo.defaults import DEFAULT_BUNDLE, DEFAULT_FRAME
from pipeline.demo.feeds import DOCK_WARMUP, write_feeds
from pipeline.demo.report import read_jsonl, write_report
from pipeline.detect import Detector
from pipeline.errors import ClipwatchError
from pipeline.video import ClipSplitter, open_video

MARKER = ".clipwatch-demo"
"""Written into the output folder first: marks it as the demo's own, so a later run may replace its files."""
OUTPUTS = ("feeds", "thumbnails", "alerts.jsonl", "verdicts.jsonl", "health.jsonl", "report.html", "report.md",
           "timeline.png")
"""Everything the demo writes into its output folder (besides `MARKER`); nothing else there is ever removed."""


def prepare_output(out: Path, *, overwrite: bool = False) -> None:
    """Make `out` ready for a run, removing only the demo's own entries (`OUTPUTS`) from an earlier run.

    A missing or empty folder, or one holding `MARKER` (an earlier demo's output), is used; with `overwrite`, any
    folder is. Otherwise ClipwatchError: a user's folder (``--out .``) is never cleared without being asked.
    """
    if out.exists() and not out.is_dir():
        raise ClipwatchError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise ClipwatchError(f"{out}: folder is not empty and was not written by clipwatch demo; choose another --out, "
                         f"or pass --overwrite to replace the demo's own entries there ({', '.join(OUTPUTS)})")
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(f"written by clipwatch demo; a new demo run here replaces only: {', '.join(OUTPUTS)}\n")


def demo_config(feeds: dict[str, Path], bundle: Path, out: Path) -> dict:
    """The pipeline config of the demo: one directory source per camera, in-process bus, alert files in ``out``; the
    dock camera learns its own normal."""
    return {
        "sources": [{"id": camera, "path": str(folder),
                     **({"normal": {"enabled": True, "warmup_clips": DOCK_WARMUP, "refit_every": 16}}
                        if camera == "dock" else {})} for camera, folder in feeds.items()],
        "bundle": str(bundle),
        "bus": {"url": "memory://", "max_backlog": 32},
        "classifier": {"max_batch": 8, "max_wait_ms": 20},
        "alerts": {
            "rules": {"kinds": {"novel": {"k": 1, "n": 1}, "adversarial": {"k": 1, "n": 1}}},
            "jsonl": str(out / "alerts.jsonl"),
            "verdicts_jsonl": str(out / "verdicts.jsonl"),
            "health_jsonl": str(out / "health.jsonl"),
            "thumbnails_dir": str(out / "thumbnails"),
        },
        "ops": {"base_port": 0, "log_format": "text", "log_level": "WARNING"},
    }


def _expected_clips(feeds: dict[str, Path], splitter: ClipSplitter) -> int:
    total = 0
    for folder in feeds.values():
        for path in sorted(folder.iterdir()):
            with open_video(path) as reader:
                total += len(splitter.plan(reader.num_frames))
    return total


def _progress(path: Path, total: int, done: threading.Event, enabled: bool) -> None:
    with tqdm(total=total, desc="clips scored", unit="clip", disable=not enabled, file=sys.stderr) as bar:
        while not done.wait(0.25):
            if path.exists():
                bar.update(sum(1 for _ in path.open()) - bar.n)
        if path.exists():
            bar.update(sum(1 for _ in path.open()) - bar.n)


Runner = Callable[..., Any]
"""Runs a `PipelineConfig` to its end: ``runner(config, out=stdout)`` returns a summary with ``skipped`` lines
(`workers.launch.run_pipeline`, given by the ``clipwatch demo`` command)."""


def run_demo(out: str | Path, *, runner: Runner, bundle: str | Path = DEFAULT_BUNDLE,
             frame: str | Path = DEFAULT_FRAME, recordings: int = 4, seed: int = 7, progress: bool = True,
             stdout: TextIO | None = None, overwrite: bool = False) -> dict:
    """Generate the feeds, run the pipeline with `runner`, write ``report.html`` / ``report.md``; returns the summary.

    `out` must be new, empty or an earlier demo's output unless `overwrite` (see `prepare_output`).
    """
    stdout = stdout or sys.stdout
    out, bundle = Path(out), Path(bundle)
    prepare_output(out, overwrite=overwrite)
    started = time.perf_counter()
    prep = Detector.preprocessing(bundle)
    print(f"writing simulated camera feeds to {out / 'feeds'} ...", file=stdout)
    feeds = write_feeds(out / "feeds", AdversarialFrame.load(frame), short_side=prep.short_side, crop=prep.crop,
                        clip_frames=prep.clip_len * prep.frame_step, recordings=recordings, seed=seed)
    total = _expected_clips(feeds, ClipSplitter(prep.clip_len, prep.clip_len, prep.frame_step))
    config: PipelineConfig = parse_config(demo_config(feeds, bundle, out), source="clipwatch demo")
    print(f"running the pipeline on {len(feeds)} cameras ({total} clips); alerts print as they fire:", file=stdout)
    done = threading.Event()
    watcher = threading.Thread(target=_progress, args=(out / "verdicts.jsonl", total, done, progress), daemon=True)
    watcher.start()
    try:
        run = runner(config, out=stdout)
    finally:
        done.set()
        watcher.join()
    verdicts, alerts = read_jsonl(out / "verdicts.jsonl"), read_jsonl(out / "alerts.jsonl")
    seconds = time.perf_counter() - started
    files = write_report(out, verdicts, alerts, seconds)
    for line in run.skipped:
        print(f"skipped {line}", file=stdout)
    print(f"{len(verdicts)} clips scored, {len(alerts)} alerts in {seconds:.0f} s; report: {files['html']}",
          file=stdout)
    return {"verdicts": verdicts, "alerts": alerts, "seconds": seconds, "report": files, "expected_clips": total}
