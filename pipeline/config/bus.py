"""The ``bus`` section: the transport between stages and its delivery settings (see `pipeline.bus`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from pipeline.config.base import Section

__all__ = ["BUS_SCHEMES", "BusConfig"]

BUS_SCHEMES = frozenset({"memory", "redis", "rediss", "unix"})


class BusConfig(Section):
    """The transport between stages and its delivery settings."""

    url: str = Field("memory://", description="memory:// (threads in one process) or redis://host:port/db")
    namespace: str = Field("clipwatch", pattern=r"^[A-Za-z0-9_.\-:]+$", description="prefix of Redis keys")
    max_backlog: int = Field(64, ge=1, le=1_000_000, description="publish blocks while a topic's backlog is here")
    visibility_timeout_ms: int = Field(30_000, ge=100, description="redeliver entries unacknowledged this long")
    max_deliveries: int = Field(5, ge=1, le=1000, description="deliveries before an entry is dead-lettered")
    publish_timeout_s: float | None = Field(None, gt=0.0, description="give up a blocked publish; None: wait")
    reconnect_timeout_s: float | None = Field(120.0, gt=0.0, description="Redis outage tolerated; None: forever")
    reset_alarm_s: float | None = Field(3600.0, ge=0.0,
                                        description="how long /healthz reports a Redis that lost its data; None: "
                                                    "until the worker restarts")
    max_message_mb: float = Field(16.0, gt=0.0, le=512.0, description="largest message accepted")
    dedupe_keys: int = Field(100_000, ge=1, description="recent clip keys each stage remembers to drop redeliveries")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in BUS_SCHEMES:
            raise ValueError(f"unsupported bus scheme {scheme!r} (use memory:// or redis://host:port/db)")
        return url

    @property
    def max_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)
