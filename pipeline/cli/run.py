"""``clipwatch run``: the whole streaming pipeline in one process (threads on the in-process bus by default)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run decoder, classifier, density and sink in one process until the file sources are done",
        description="Runs all four stages in this process. Ends when every file source is exhausted and the "
                    "pipeline has drained; live sources run until SIGTERM/SIGINT. Alerts are printed as they fire.")
    parser.add_argument("--config", required=True, type=Path, help="pipeline YAML (e.g. configs/local.yaml)")
    parser.add_argument("--drain-timeout", type=float, default=None,
                        help="seconds to wait for the pipeline to drain after the last file (default: no limit)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from workers.launch import run_pipeline
    from workers.ops import configure_logging

    config = load_config(args.config)
    configure_logging(config.ops.log_format, "DEBUG" if getattr(args, "verbose", False) else config.ops.log_level)
    summary = run_pipeline(config, drain_timeout_s=args.drain_timeout)
    state = "stopped" if summary.stopped else "done"
    print(f"run {state}: {sum(summary.published.values())} clips from {len(summary.published)} streams, "
          f"{summary.alerts} alerts, {len(summary.skipped)} inputs skipped, {summary.seconds:.1f} s")
    if not summary.published and summary.skipped and not summary.stopped:
        print(f"clipwatch run: error: no source could be opened ({len(summary.skipped)} skipped; see above)",
              file=sys.stderr)
        return 1
    return 0
