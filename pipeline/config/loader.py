"""Reading a config: YAML to a validated `PipelineConfig`, every problem one `ConfigError` line naming the file
and the key path (with a "did you mean" for a mistyped key)."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.base import ConfigError
from pipeline.config.pipeline import PipelineConfig
from pipeline.config.sources import SourceConfig
from pipeline.errors import one_line, validation_problem

__all__ = ["load_config", "parse_config", "reload_sources"]


def load_config(path: str | os.PathLike, environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read and validate a YAML config (``${VAR}`` read from `environ`, default: the process environment);
    ConfigError (one line, naming file and key) on any problem."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{name}: cannot read config: {getattr(error, 'strerror', None) or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{name}: {where}invalid YAML: {one_line(problem)}") from None
    config = parse_config(data, source=name, base=Path(path).resolve().parent, environ=environ)
    config._source_path = Path(path).resolve()
    return config


def reload_sources(config: PipelineConfig) -> tuple[list[SourceConfig], list[str]]:
    """The `sources` of `config`'s file as it reads now, validated with the whole file (ConfigError, one line, as at
    start), and the names of the other sections that changed since (a reload applies only `sources`)."""
    if config.source_path is None:
        raise ConfigError(f"{config.source_file}: not read from a file, nothing to reload")
    fresh = load_config(config.source_path)
    changed = [name for name in PipelineConfig.model_fields
               if name != "sources" and getattr(fresh, name) != getattr(config, name)]
    return fresh.sources, changed


def parse_config(data: Any, *, source: str = "config", base: str | os.PathLike | None = None,
                 environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Validate already-parsed config data; relative paths resolve against `base` (default: working directory)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    context = {"base": Path(base or os.getcwd()), "environ": os.environ if environ is None else environ}
    try:
        config = PipelineConfig.model_validate(data, context=context)
    except ValidationError as error:
        raise ConfigError(f"{source}: {validation_problem(error, known_keys=_known_keys)}") from None
    config._source_file = source
    return config


def _known_keys(parent: tuple) -> list[str]:
    """The keys a config allows at key path `parent` (for "did you mean" suggestions)."""
    model: Any = PipelineConfig
    for part in parent:
        model = _step_into(model, part)
    model = _unwrap(model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`annotation` without Annotated[...] and Optional[...] wrappers (None for a union of several types)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = options[0] if len(options) == 1 else None
        else:
            return annotation


def _step_into(annotation: Any, part: Any) -> Any:
    """The type reached from `annotation` by one key-path part (a field name, list index or dict key)."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return None
