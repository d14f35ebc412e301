"""Pick a transport from a URL, so workers and configs name the bus with one string."""

from __future__ import annotations

from typing import Any

from pipeline.bus.base import Bus
from pipeline.bus.memory import InProcessBus
from pipeline.bus.redis_streams import RedisBus

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_bus(url: str | None = None, **options: Any) -> Bus:
    """``None`` or ``"memory://"`` → `InProcessBus`; ``redis://…`` → `RedisBus`. `options` go to the constructor."""
    if url is None or url == "memory://":
        return InProcessBus(**options)
    if url.startswith(REDIS_SCHEMES):
        return RedisBus(url, **options)
    raise ValueError(f"unknown bus URL {url!r}: expected 'memory://' or redis://host:port/db")
