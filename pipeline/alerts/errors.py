"""Errors raised by :mod:`pipeline.alerts`: all are ``ValueError`` subclasses with one-line messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.errors import ClipwatchError, one_line, validation_problem

Model = TypeVar("Model", bound=BaseModel)


class AlertError(ClipwatchError, ValueError):
    """Base class of the alerting errors."""


class AlertConfigError(AlertError):
    """An alerting configuration that does not validate: ``"<what>: <field>: <reason>; ..."``."""


def validate_config(model: type[Model], config: Model | Mapping[str, Any] | None, what: str) -> Model:
    """`config` as a `model` instance; validation problems become one `AlertConfigError` line."""
    if isinstance(config, model):
        return config
    try:
        return model.model_validate(config or {})
    except ValidationError as exc:
        raise AlertConfigError(f"{what}: {validation_problem(exc)}") from None


class AlertInputError(AlertError):
    """A scored clip that cannot be turned into an alert: ``"<clip key>: <reason>"``."""

    def __init__(self, clip: object, reason: str):
        self.clip = one_line(clip)
        self.reason = one_line(reason)
        super().__init__(f"{self.clip}: {self.reason}")


class AlertSchemaError(AlertError):
    """An alert body that does not conform to ``alert.schema.json``: ``"<json path>: <reason>"``."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = one_line(reason)
        super().__init__(f"{where}: {self.reason}")


class JournalError(AlertError):
    """A JSONL journal (alerts, delivery ledger, dead letters) that cannot be read: ``"<file>:<line>: <reason>"``."""

    def __init__(self, path: object, line: int, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = one_line(reason)
        super().__init__(f"{self.path}:{line}: {self.reason}")


class SignatureError(AlertError):
    """A webhook request whose ``X-Clipwatch-Signature`` does not verify: ``reason`` is ``missing``,
    ``malformed``, ``legacy``, ``mismatch``, ``stale`` or ``future``; the message is one line without the secret."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(one_line(message))


class SinkClosedError(AlertError):
    """An alert handed to a sink after `close()`."""
