"""The ``sources`` section: the pipeline's inputs, and the check that no two of them share a stream id."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config.base import ConfigError, ConfigPath, EnvStr, Section
from pipeline.config.camera import CameraNormalOverrides
from pipeline.errors import validation_problem

__all__ = ["SOURCE_SCHEMES", "SourceConfig", "check_stream_ids", "parse_source"]

SOURCE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "tcp", "srt", "file"})


class SourceConfig(Section):
    """One input: a video file, a directory of videos, a stream URL or a webcam (exactly one of path/uri/webcam)."""

    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-/]+$",
                              description="stream id in clip keys (a directory's files: <id>/<path inside it>); "
                                          "default: file stem, directory name, URL without password, cameraN")
    path: ConfigPath | None = Field(None, description="a video file, or a directory scanned for videos, read one after "
                                     "another (simultaneous cameras need a source each)")
    uri: str | None = Field(None, description="rtsp/http(s)/udp/... stream, or file:// URL read as a stream")
    webcam: int | None = Field(None, ge=0, description="camera index")
    loop: bool = Field(False, description="replay a file (or every file of a directory) forever")
    pace: float | None = Field(None, gt=0.0, description="replay files at this multiple of real time; "
                                                         "None: as fast as the pipeline takes them")
    stride: int | None = Field(None, ge=1, description="frames between clip starts (default: the clip length)")
    recursive: bool = Field(True, description="scan sub-directories of a directory source")
    open_timeout_s: float = Field(10.0, gt=0.0)
    stall_timeout_s: float = Field(5.0, gt=0.0)
    max_reconnects: int | None = Field(None, ge=0, description="reconnects in a row before giving up; None: never")
    backoff_initial_s: float = Field(0.5, gt=0.0)
    backoff_max_s: float = Field(30.0, gt=0.0)
    options: dict[str, EnvStr] = Field(default_factory=dict, description="FFmpeg options of a stream (PyAV backend)")
    normal: CameraNormalOverrides | None = Field(None, description="this camera's changes to the camera_normal "
                                                                   "section (e.g. {enabled: false})")

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        parts = urlsplit(uri)
        if parts.scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unsupported scheme {parts.scheme!r} (use one of {', '.join(sorted(SOURCE_SCHEMES))})")
        if parts.scheme != "file" and not parts.hostname:
            raise ValueError("a stream URL needs a host")
        return uri

    @model_validator(mode="after")
    def _one_input(self) -> SourceConfig:
        given = [name for name in ("path", "uri", "webcam") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, uri, webcam (got {', '.join(given) or 'none'})")
        if (self.loop or self.pace is not None) and self.path is None:
            raise ValueError("loop and pace apply to path sources only")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not exceed backoff_max_s")
        return self

    @property
    def is_live(self) -> bool:
        """Live sources (streams, cameras, looped files) run until stopped; the others end."""
        return self.path is None or self.loop

    @property
    def stream_id(self) -> str | None:
        """The stream id of a file, URL or camera; a directory's files get ``<this>/<path inside it, no suffix>``.

        `id` if set, else the file stem, the directory name, the URL without its password or ``cameraN``; None for
        a path that does not exist (it is skipped at run time).
        """
        if self.id is not None:
            return self.id
        if self.webcam is not None:
            return f"camera{self.webcam}"
        if self.uri is not None:
            from pipeline.video.errors import describe_source

            return describe_source(self.uri)
        if self.path.is_file():
            return self.path.stem
        return self.path.name if self.path.is_dir() else None


def check_stream_ids(sources: list[SourceConfig]) -> None:
    """ValueError for two sources whose streams could share an id: their clips would have the same keys, and
    every stage would drop the second one's clips as already done."""
    ids = [source.id for source in sources if source.id is not None]
    repeated = sorted({name for name in ids if ids.count(name) > 1})
    if repeated:
        raise ValueError(f"sources: stream ids must be unique, repeated: {', '.join(repeated)}")
    for first, one in enumerate(sources):
        for second in range(first + 1, len(sources)):
            other = sources[second]
            a, b = one.stream_id, other.stream_id
            if a is None or b is None:
                continue
            nested = ((b.startswith(f"{a}/") and one.path is not None and one.path.is_dir())
                      or (a.startswith(f"{b}/") and other.path is not None and other.path.is_dir()))
            if a == b or nested:
                raise ValueError(f"sources.{first} ({_source_name(one)}, stream id {a!r}) and sources.{second} "
                                 f"({_source_name(other)}, stream id {b!r}) would give clips the same keys; "
                                 "set a distinct `id` on one of them")


def parse_source(data: Any, *, base: str | os.PathLike, environ: Mapping[str, str] | None = None,
                 name: str = "source") -> SourceConfig:
    """One source from parsed data (a camera added at run time): relative paths against `base`, ``${VAR}`` from
    `environ` (give ``{}`` for data from outside, so that it can never read the process's environment);
    ConfigError, one line naming the key, if invalid."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: expected a mapping of source keys, got {type(data).__name__}")
    context = {"base": base, "environ": os.environ if environ is None else environ}
    try:
        return SourceConfig.model_validate(dict(data), context=context)
    except ValidationError as error:
        known = list(SourceConfig.model_fields)
        raise ConfigError(f"{name}: {validation_problem(error, known_keys=lambda _parent: known)}") from None


def _source_name(source: SourceConfig) -> str:
    """A source's input as error messages name it (a URL without its password)."""
    from pipeline.video.errors import describe_source

    return describe_source(source.path if source.path is not None else
                           source.uri if source.uri is not None else source.webcam)
