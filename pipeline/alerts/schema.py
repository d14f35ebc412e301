"""The alert body's JSON Schema (``alert.schema.json``) and a validator for it, for tests and receivers.

The validator implements the subset of JSON Schema 2020-12 the alert schema uses (``type``, ``const``, ``enum``,
``properties``, ``required``, ``additionalProperties``, ``items``, ``minItems``, ``minimum``, ``maximum``,
``minLength``, ``pattern``) and refuses schemas with any other validation keyword, so it can never pass a body by
silently ignoring a rule. It avoids a dependency on the ``jsonschema`` package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from pipeline.alerts.errors import AlertSchemaError

_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description"})
_KEYWORDS = frozenset(
    {"type", "const", "enum", "properties", "required", "additionalProperties", "items", "minItems", "minimum",
     "maximum", "minLength", "pattern"}
)
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


@lru_cache(maxsize=1)
def alert_schema() -> Mapping[str, Any]:
    """The parsed ``alert.schema.json`` shipped with this package."""
    return json.loads(resources.files("pipeline.alerts").joinpath("alert.schema.json").read_text("utf-8"))


def validate_alert_body(body: Any, schema: Mapping[str, Any] | None = None) -> None:
    """Raise `AlertSchemaError` (naming the JSON path) unless `body` conforms to the alert schema.

    `body` may be the decoded object or the raw JSON bytes/str of a webhook request.
    """
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise AlertSchemaError("$", f"not JSON: {exc}") from None
    _validate(body, alert_schema() if schema is None else schema, "$")


def _validate(value: Any, schema: Mapping[str, Any], where: str) -> None:
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise AlertSchemaError(where, f"schema keyword(s) not supported: {', '.join(sorted(unknown))}")
    if "type" in schema:
        allowed = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        if not any(_TYPES[name](value) for name in allowed):
            raise AlertSchemaError(where, f"expected {' or '.join(allowed)}, got {_type_name(value)}")
    if "const" in schema and not _same(value, schema["const"]):
        raise AlertSchemaError(where, f"expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        raise AlertSchemaError(where, f"{value!r} is not one of {schema['enum']!r}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise AlertSchemaError(where, f"{value!r} is below the minimum {schema['minimum']!r}")
        if "maximum" in schema and value > schema["maximum"]:
            raise AlertSchemaError(where, f"{value!r} is above the maximum {schema['maximum']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise AlertSchemaError(where, f"string shorter than {schema['minLength']}")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            raise AlertSchemaError(where, f"{value!r} does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise AlertSchemaError(where, f"expected at least {schema['minItems']} item(s), got {len(value)}")
        if "items" in schema:
            for index, item in enumerate(value):
                _validate(item, schema["items"], f"{where}[{index}]")
    if isinstance(value, dict):
        _validate_object(value, schema, where)


def _validate_object(value: dict, schema: Mapping[str, Any], where: str) -> None:
    missing = [name for name in schema.get("required", ()) if name not in value]
    if missing:
        raise AlertSchemaError(where, f"missing required field(s): {', '.join(missing)}")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        path = f"{where}.{name}"
        if not isinstance(name, str):
            raise AlertSchemaError(path, "object keys must be strings")
        if name in properties:
            _validate(item, properties[name], path)
        elif extra is False:
            raise AlertSchemaError(path, "unexpected field")
        elif isinstance(extra, Mapping):
            _validate(item, extra, path)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers."""
    return (type(a) is bool) == (type(b) is bool) and a == b


def _type_name(value: Any) -> str:
    return next((name for name, check in _TYPES.items() if name != "integer" and check(value)), type(value).__name__)
