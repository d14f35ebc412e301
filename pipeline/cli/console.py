"""``clipwatch console RUN_DIR``: the operator's console for a pipeline's output folder, finished or still running."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import threading
from pathlib import Path

from pipeline.cli import COMMAND_HELP

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "console", help=COMMAND_HELP["console"],
        description="Reads RUN_DIR's alerts.jsonl, verdicts.jsonl, health.jsonl and thumbnails/ (what `clipwatch "
                    "run` and `clipwatch demo` write) into a SQLite store, follows them while they grow, and serves "
                    "the console page at / and its API under /api/ until Ctrl-C. Acknowledgements and dismissals "
                    "are kept in the store across restarts.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the pipeline's output folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s; 0: any free one)")
    parser.add_argument("--db", type=Path, default=None, help="SQLite store (default: RUN_DIR/console.db)")
    parser.add_argument("--token-env", default=None, metavar="VAR",
                        help="environment variable holding a bearer token the API then requires")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between reads of growing files")
    parser.set_defaults(func=run_console)


def console_token(host: str, token_env: str | None) -> str | None:
    """The token from `token_env`; ConsoleError for a named but unset one on a non-loopback address."""
    from pipeline.console import ConsoleError

    if token_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", token_env):
        raise ConsoleError(f"--token-env: {token_env!r} is not an environment variable name")
    token = os.environ.get(token_env, "") if token_env else ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if token_env and not token and not loopback:
        raise ConsoleError(f"--token-env: {token_env} is not set, and {host} is not loopback: set the token or "
                           "bind 127.0.0.1")
    if not token and not loopback:
        logger.warning("console: %s is open to the network without a token; pass --token-env", host)
    return token or None


def run_console(args: argparse.Namespace) -> int:
    from pipeline.console import ConsoleError, ConsoleServer, ConsoleStore, RunFollower

    if not args.run_dir.is_dir():
        raise ConsoleError(f"{args.run_dir}: no such folder")
    if not 0 <= args.port <= 65_535 or args.poll <= 0:
        raise ConsoleError("--port must be 0 to 65535 and --poll positive")
    token = console_token(args.host, args.token_env)
    store = ConsoleStore(args.db or args.run_dir / "console.db")
    follower = server = None
    stop = threading.Event()
    try:
        follower = RunFollower(store, args.run_dir, poll_s=args.poll)
        follower.catch_up()
        server = ConsoleServer(store, host=args.host, port=args.port, token=token,
                               thumbnail_dirs=[follower.thumbnails_dir]).start()
        _, total = store.alerts(limit=1)
        print(f"console: serving {server.url} ({total} alerts, {len(store.cameras())} cameras from {args.run_dir}, "
              "followed while it grows); Ctrl-C stops", flush=True)
        follower.start()
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
    finally:
        if follower is not None:
            follower.close()
        if server is not None:
            server.close()
        store.close()
    return 0
