"""The ``console`` section: the operator's console the sink serves while the pipeline runs (alerts, cameras,
acknowledgements; see `pipeline.console`). Without the section the sink serves none."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from pipeline.config.base import ENV_NAME, ConfigError, ConfigPath, Section
from pipeline.config.ops import _is_loopback

__all__ = ["ConsoleConfig"]


class ConsoleConfig(Section):
    """Where the console listens, its optional bearer token, and its SQLite file."""

    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 to expose it, with a token)")
    port: int = Field(8080, ge=0, le=65_535, description="0: an ephemeral port, logged at start")
    token_env: str | None = Field(None, pattern=ENV_NAME,
                                  description="environment variable holding the bearer token the API requires; "
                                              "None: no token")
    db: ConfigPath | None = Field(None, description="SQLite file of alerts, reviews and camera states; None: "
                                                   "console.db beside the alert log")

    def token(self, environ: dict[str, str] | None = None) -> str | None:
        """The bearer token from ``token_env``, None without one; ConfigError for a named but unset token on a
        non-loopback address (rather than expose the console without the token the config asks for)."""
        value = (os.environ if environ is None else environ).get(self.token_env, "") if self.token_env else ""
        if value:
            return value
        if self.token_env and not _is_loopback(self.host):
            raise ConfigError(f"console.token_env: {self.token_env} is not set, and console.host {self.host} is not "
                              "loopback: set the token or bind 127.0.0.1")
        return None

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.host)

    def db_path(self, alert_log: Path) -> Path:
        return self.db if self.db is not None else alert_log.parent / "console.db"
