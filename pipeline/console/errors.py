"""Errors of the operator's console: one line each, all `ClipwatchError`s (the CLI prints them and exits 2)."""

from __future__ import annotations

from pipeline.errors import ClipwatchError


class ConsoleError(ClipwatchError):
    """The console cannot start or serve: a store it cannot open, an address it cannot bind, a missing token."""


class ApiError(ConsoleError):
    """A request the API refuses: `status` is the HTTP status, the message its one-line ``error``."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)
