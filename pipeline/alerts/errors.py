"""Errors raised by :mod:`pipeline.alerts`: all are ``ValueError`` subclasses with one-line messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def one_line(text: object) -> str:
    """`text` as a single line: whitespace runs (newlines included) collapse to one space."""
    return re.sub(r"\s+", " ", str(text)).strip()


class AlertError(ValueError):
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
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise AlertConfigError(f"{what}: {one_line(problems)}") from None


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


class SinkClosedError(AlertError):
    """An alert handed to a sink after `close()`."""
