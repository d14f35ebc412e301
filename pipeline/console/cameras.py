"""Cameras added and removed while the pipeline runs: ``POST /api/cameras`` and ``DELETE /api/cameras/{id}``.

The console only validates and forwards. Whoever runs the decoder in the console's process registers a
`CameraControl` (the workers do, in ``clipwatch run``), so the library never depends on them; without one the
endpoints answer 404 and are not in the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, SourceConfig, parse_source
from pipeline.console.errors import ApiError
from pipeline.console.store import camera_of
from pipeline.errors import ClipwatchError

__all__ = ["CameraControl", "add_camera", "remove_camera"]

NOT_HERE = ("cameras can be added and removed only where the console runs in the decoder's process (clipwatch run "
            "with a console: section); elsewhere edit the config's sources and send SIGHUP to the decoder")


@dataclass(frozen=True)
class CameraControl:
    """The decoder's hooks: `add` starts a source and returns its stream id (ClipwatchError, one line, if refused),
    `remove` stops the source of a stream id (False if none runs); `base` is where relative paths resolve."""

    add: Callable[[SourceConfig], str]
    remove: Callable[[str], bool]
    base: Path


def add_camera(control: CameraControl | None, body: Any) -> dict[str, Any]:
    """Validate `body` as a source of the config (``id`` required; ``${VAR}`` never read) and start it."""
    if control is None:
        raise ApiError(404, NOT_HERE)
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ApiError(400, "body must be a JSON object with an 'id' and one of 'uri', 'path', 'webcam' "
                            "(the keys of a config source)")
    try:
        source = parse_source(body, base=control.base, environ={}, name="camera")
    except ConfigError as error:
        raise ApiError(400, str(error)) from None
    try:
        stream_id = control.add(source)
    except ClipwatchError as error:
        raise ApiError(409, str(error)) from None
    return {"id": stream_id, "camera": camera_of(stream_id), "state": "added"}


def remove_camera(control: CameraControl | None, stream_id: str) -> dict[str, Any]:
    """Stop the source whose stream id is `stream_id`; its clips in flight are still scored."""
    if control is None:
        raise ApiError(404, NOT_HERE)
    if not control.remove(stream_id):
        raise ApiError(404, f"no running source with id {stream_id[:200]!r}")
    return {"id": stream_id, "camera": camera_of(stream_id), "state": "removed"}
