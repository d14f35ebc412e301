"""``clipwatch worker NAME``: one pipeline stage in this process, talking to the others over the configured bus."""

from __future__ import annotations

import argparse
from pathlib import Path

WORKERS = ("decoder", "classifier", "density", "sink")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker", help="run one stage (decoder, classifier, density or sink) over Redis Streams",
        description="Runs one stage until SIGTERM/SIGINT (a decoder with only file sources ends with its files). "
                    "Serves /healthz and /metrics on the stage's ops port.")
    parser.add_argument("name", choices=WORKERS, help="the stage to run")
    parser.add_argument("--config", required=True, type=Path, help="pipeline YAML (e.g. configs/redis.yaml)")
    parser.add_argument("--port", type=int, default=None, help="ops port (default: from the config; 0: ephemeral)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from workers.launch import run_worker
    from workers.ops import configure_logging

    config = load_config(args.config)
    configure_logging(config.ops.log_format, "DEBUG" if getattr(args, "verbose", False) else config.ops.log_level)
    return run_worker(args.name, config, port=args.port)
