"""Graceful stop on SIGTERM / SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def handle_signals(stop: threading.Event) -> Iterator[None]:
    """While inside: SIGTERM / SIGINT set `stop` (graceful: finish the batch in flight); a second one exits at once.

    The previous handlers come back on exit. Outside the main thread (where Python cannot set handlers) it does
    nothing, and `stop` is the caller's to set.
    """

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        logger.info("%s: finishing the batch in flight, then exiting", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
