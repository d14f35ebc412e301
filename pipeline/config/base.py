"""What every config section shares: the `Section` base model, the error type, and the two value types that read
the config's surroundings from the validation context.

* every field of a `Section` given as a string, whatever its type (a number, a flag, a choice, a path), and every
  `EnvStr` inside a list or mapping: ``${VAR}`` / ``${VAR:-default}`` substituted from the context's ``environ``
  (default: the process environment), then validated as the field's type. The substitution happens on the parsed
  value of one field, so a variable can never inject YAML, and an unset variable fails naming the key path.
* `ConfigPath`: interpolated, then a relative path resolved against the context's ``base`` (the config file's
  directory), so a config means the same whatever the working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo, field_validator

from pipeline.errors import ClipwatchError

__all__ = ["ENV_NAME", "FromEnv", "ConfigError", "ConfigPath", "EnvStr", "Section", "interpolate"]

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""The pattern of an environment variable's name (fields that name a variable rather than read it)."""

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ClipwatchError, ValueError):
    """A configuration that cannot be used; one line: ``"<file>: <key path>: <reason>"``."""


def interpolate(value: Any, info: ValidationInfo) -> Any:
    """`value` with ``${VAR}`` / ``${VAR:-default}`` replaced when it is a string (other values pass unchanged).

    The default applies when the variable is unset or empty; an unset variable without one is a ValueError, which
    pydantic reports at the field's key path.
    """
    if not isinstance(value, str):
        return value
    environ = (info.context or {}).get("environ")
    environ = os.environ if environ is None else environ

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                raise ValueError(f"environment variable {name} is not set")
            return default
        return found

    return _ENV_REFERENCE.sub(substitute, value)


def interpolate_all(value: Any, info: ValidationInfo) -> Any:
    """`value` with every string inside it (through mappings and lists) interpolated: for a field whose type is
    another package's model (the alert rules, a retry policy), whose own fields cannot read the environment."""
    if isinstance(value, Mapping):
        return {key: interpolate_all(item, info) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate_all(item, info) for item in value]
    return interpolate(value, info)


FromEnv = BeforeValidator(interpolate_all)
"""Annotate a field of another package's model type with it: ``Annotated[RetryPolicy, FromEnv]``."""

EnvStr = Annotated[str, BeforeValidator(interpolate)]
"""A string in a list or mapping in which ``${VAR}`` and ``${VAR:-default}`` are read from the environment (a
`Section`'s own fields are interpolated without it)."""


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """A relative path made absolute against the config file's directory (the validation context's ``base``)."""
    value = value.expanduser()
    base = (info.context or {}).get("base")
    return value if value.is_absolute() or base is None else (Path(base) / value).resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
"""A path resolved against the config file's directory when relative."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable, defaults validated (paths resolved),
    and a field given as a string has its environment references substituted before it is validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _interpolate(cls, value: Any, info: ValidationInfo) -> Any:
        return interpolate(value, info)
