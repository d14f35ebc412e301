"""``clipwatch alerts replay``: re-send dead-lettered webhook deliveries with the pipeline config's webhook settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import COMMAND_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("alerts", help=COMMAND_HELP["alerts"],
                                   description="Alert maintenance commands.")
    commands = parser.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    replay = commands.add_parser(
        "replay", help="re-send dead-lettered webhook deliveries, signed, with their idempotency keys",
        description="POSTs each selected dead letter once to its URL with the configured secret. A success is "
                    "recorded in the ledger, so replaying again skips it. Run it with the sink stopped (the "
                    "ledger is locked while in use). Exit status 1 if any delivery failed.")
    replay.add_argument("--config", required=True, type=Path, help="pipeline YAML with alerts.webhooks")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", action="append", dest="keys", metavar="KEY",
                       help="idempotency key (stream:seq:kind) to replay (repeatable)")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    from pipeline.alerts.replay import replay_dead_letters
    from pipeline.config import ConfigError, load_config

    config = load_config(args.config)
    webhooks = config.webhook_config()
    if webhooks is None:
        raise ConfigError(f"{args.config}: alerts.webhooks is not configured, nothing to replay")
    outcomes = replay_dead_letters(webhooks, None if args.all else args.keys)
    for outcome in outcomes:
        print(outcome)
    counts = {status: sum(o.status == status for o in outcomes) for status in ("delivered", "already_delivered",
                                                                               "failed")}
    print(f"replay: {counts['delivered']} delivered, {counts['already_delivered']} already delivered, "
          f"{counts['failed']} failed")
    return 1 if counts["failed"] else 0
