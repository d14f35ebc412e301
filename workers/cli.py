"""The ``clipwatch`` sub-commands that run the pipeline's processes: ``run``, ``worker`` and ``demo``.

They live on the application side and reach the command line through the ``clipwatch.commands`` entry points
(see pyproject.toml), so the `pipeline` library never imports `workers`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.stream.topology import WORKERS


def register_run(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run decoder, classifier, density and sink in one process until the file sources are done",
        description="Runs all four stages in this process. Ends when every file source is exhausted and the "
                    "pipeline has drained; live sources run until SIGTERM/SIGINT. Alerts are printed as they fire.")
    parser.add_argument("--config", required=True, type=Path, help="pipeline YAML (e.g. configs/local.yaml)")
    parser.add_argument("--drain-timeout", type=float, default=None,
                        help="seconds to wait for the pipeline to drain after the last file (default: no limit)")
    parser.add_argument("--progress", type=float, default=10.0, metavar="SECONDS",
                        help="a progress line on stderr every SECONDS (default %(default)s; 0: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workers.launch import run_pipeline

    summary = run_pipeline(_configure(args), drain_timeout_s=args.drain_timeout,
                           progress=sys.stderr if args.progress > 0 else None, progress_s=args.progress or 10.0)
    state = "stopped" if summary.stopped else "done"
    print(f"run {state}: {sum(summary.published.values())} clips from {len(summary.published)} streams, "
          f"{summary.alerts} alerts, {len(summary.skipped)} inputs skipped, {summary.seconds:.1f} s")
    if not summary.published and summary.skipped and not summary.stopped:
        print(f"clipwatch run: error: no source could be opened ({len(summary.skipped)} skipped; see above)",
              file=sys.stderr)
        return 1
    return 0


def register_worker(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker", help="run one stage (decoder, classifier, density or sink) over Redis Streams",
        description="Runs one stage until SIGTERM/SIGINT (a decoder with only file sources ends with its files). "
                    "Serves /healthz and /metrics on the stage's ops port.")
    parser.add_argument("name", choices=WORKERS, help="the stage to run")
    parser.add_argument("--config", required=True, type=Path, help="pipeline YAML (e.g. configs/redis.yaml)")
    parser.add_argument("--port", type=int, default=None, help="ops port (default: from the config; 0: ephemeral)")
    parser.set_defaults(func=worker)


def worker(args: argparse.Namespace) -> int:
    from workers.launch import run_worker

    return run_worker(args.name, _configure(args), port=args.port)


def register_demo(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.demo import DEFAULT_BUNDLE, DEFAULT_FRAME

    parser = subparsers.add_parser("demo", help="simulate cameras (normal, novel, attacked, tampered) and report the alerts")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="output folder: new, empty or an earlier demo's (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="use a non-empty folder the demo did not write, replacing only the demo's own entries")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="detector bundle (default: shipped)")
    parser.add_argument("--frame", type=Path, default=DEFAULT_FRAME, help="adversarial frame painted on the gate feed")
    parser.add_argument("--recordings", type=int, default=4, help="recordings per camera (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo
    from workers.launch import run_pipeline

    summary = run_demo(args.out, runner=run_pipeline, bundle=args.bundle, frame=args.frame,
                       recordings=args.recordings, seed=args.seed, progress=not args.no_progress,
                       overwrite=args.overwrite)
    return 0 if len(summary["verdicts"]) == summary["expected_clips"] else 1


def _configure(args: argparse.Namespace):
    """The config of ``--config``, with the process's logging set up as it says."""
    from pipeline.config import load_config
    from workers.ops import configure_logging

    config = load_config(args.config)
    configure_logging(config.ops.log_format, "DEBUG" if getattr(args, "verbose", False) else config.ops.log_level)
    return config
