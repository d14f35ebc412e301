"""The ``ops`` section: each worker's /healthz and /metrics HTTP server, and the log format.

Who serves them comes from `pipeline.stream.topology`: a port per worker, and ``run`` for the in-process pipeline.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from pipeline.config.base import ENV_NAME, ConfigError, Section, interpolate
from pipeline.stream.topology import OPS_NAMES, WORKERS

__all__ = ["OpsConfig"]

OpsName = Literal[OPS_NAMES]  # type: ignore[valid-type]
"""A worker's name, or "run"."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpsConfig(Section):
    """Operations: the /healthz and /metrics HTTP port of each worker, and log format."""

    host: str = Field("127.0.0.1", description="address the ops HTTP server binds (0.0.0.0 in containers, with a "
                                                  "token)")
    token_env: str | None = Field(None, pattern=ENV_NAME,
                                     description="environment variable holding the bearer token /healthz and "
                                                 "/metrics require; None: no token")
    base_port: int = Field(0, ge=0, le=65_535, description="0: ephemeral ports (logged); else worker i uses base+i")
    ports: dict[OpsName, Annotated[int, BeforeValidator(interpolate), Field(ge=0, le=65_535)]] = Field(
        default_factory=dict, description="explicit ops port per worker (\"run\": the in-process pipeline)")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    lag_interval_s: float = Field(1.0, gt=0.0, description="how often queue lag gauges are refreshed")
    stop_timeout_s: float = Field(20.0, gt=0.0, description="on SIGTERM, seconds to finish the batch in flight "
                                                            "before giving up on the bus (Docker waits 30)")

    def token(self) -> str | None:
        """The bearer token from ``token_env``, None without one.

        An unset variable is allowed on a loopback address only: ConfigError rather than expose the endpoints
        without the token the config asks for.
        """
        value = os.environ.get(self.token_env, "") if self.token_env else ""
        if value:
            return value
        if self.token_env and not _is_loopback(self.host):
            raise ConfigError(f"ops.token_env: {self.token_env} is not set, and ops.host {self.host} is not "
                              "loopback: set the token or bind 127.0.0.1")
        return None

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.host)

    def port_for(self, name: str) -> int:
        """The ops port of worker `name` ("run" for the in-process pipeline): explicit, else base + the worker's
        index in `WORKERS` (base for "run"), else 0."""
        if name in self.ports:
            return self.ports[name]
        if not self.base_port:
            return 0
        return self.base_port + (WORKERS.index(name) if name in WORKERS else 0)
