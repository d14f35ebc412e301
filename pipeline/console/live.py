"""The console of a running sink: its store fed by the sink's own callbacks (each alert, each verdict, each health
event as it is recorded), served over HTTP for as long as the sink runs (config section ``console``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.alerts import Alert
from pipeline.config import PipelineConfig
from pipeline.console.cameras import CameraControl
from pipeline.console.server import ConsoleServer
from pipeline.console.store import ConsoleStore

__all__ = ["LiveConsole"]

logger = logging.getLogger(__name__)


class LiveConsole:
    """`alert`, `verdict` and `health` feed the store; none of them ever raises, so a console problem (a full
    disk under its database) costs the console, never an alert: it is logged, at most once a minute."""

    def __init__(self, store: ConsoleStore, server: ConsoleServer):
        self.store = store
        self.server = server
        self._warned_at = 0.0

    @classmethod
    def from_config(cls, config: PipelineConfig) -> LiveConsole:
        """Open the store and start serving, as ``config.console`` says (it must be set)."""
        settings = config.console
        token = settings.token()
        if token is None and not settings.is_loopback:
            logger.warning("console: %s:%s is open to the network without a token; set console.token_env",
                           settings.host, settings.port)
        store = ConsoleStore(settings.db_path(config.alerts.jsonl))
        dirs = [config.alerts.thumbnails_dir] if config.alerts.thumbnails_dir is not None else []
        try:
            server = ConsoleServer(store, host=settings.host, port=settings.port, token=token, thumbnail_dirs=dirs)
        except Exception:
            store.close()
            raise
        console = cls(store, server.start())
        logger.info("console: database %s", store.path)
        return console

    @property
    def url(self) -> str:
        return self.server.url

    def serve_cameras(self, control: CameraControl | None) -> None:
        """Let the API add and remove cameras through `control` (the decoder of this process); None: no more."""
        self.server.cameras = control

    def alert(self, alert: Alert) -> None:
        self._feed(self.store.add_alerts, [alert.to_body()])

    def verdict(self, record: Mapping[str, Any]) -> None:
        """A verdict log record (`pipeline.stream.steps.record.verdict_record`)."""
        self._feed(self.store.add_verdicts, [record])

    def health(self, record: Mapping[str, Any]) -> None:
        """A health event: stream_id, state, detail, time."""
        self._feed(self.store.add_health, [record])

    def close(self) -> None:
        if not self.store.closed:
            self.server.close()
            self.store.close()

    def _feed(self, add: Callable[[list], Any], records: list) -> None:
        if self.store.closed:
            return
        try:
            add(records)
        except Exception as error:  # never let the console stop the sink
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                logger.warning("console: could not record in %s: %s", self.store.path, error)
