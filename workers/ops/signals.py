"""Graceful stop on SIGTERM / SIGINT, and SIGHUP as a request to reload (the decoder re-reads its sources)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def handle_signals(stop: threading.Event, reload: threading.Event | None = None) -> Iterator[None]:
    """While inside: SIGTERM / SIGINT set `stop` (graceful: finish the batch in flight); a second one exits at once.
    SIGHUP sets `reload` (whoever owns it does the work, outside the handler); without one it is logged and ignored,
    so a stray SIGHUP never kills a worker.

    The previous handlers come back on exit. Outside the main thread (where Python cannot set handlers) it does
    nothing, and `stop` is the caller's to set.
    """

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        logger.info("%s: finishing the batch in flight, then exiting", signal.Signals(signum).name)
        stop.set()

    def hang_up(_signum: int, _frame: object) -> None:
        if reload is None:
            logger.info("SIGHUP: nothing to reload in this process; ignored")
        else:
            reload.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGTERM: handle, signal.SIGINT: handle, signal.SIGHUP: hang_up}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
