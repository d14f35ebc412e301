"""The one error type of the video layer, and helpers that keep its messages to one line without secrets."""

from __future__ import annotations

import os

from pipeline.errors import ClipwatchError, one_line, redact


class VideoError(ClipwatchError, ValueError):
    """A video input that cannot be used: the message is one line, ``"<input>: <reason>"``."""

    def __init__(self, source: object, reason: str):
        self.source = describe_source(source)
        self.reason = one_line(reason)
        super().__init__(f"{self.source}: {self.reason}")


def describe_source(source: object) -> str:
    """How an input is named in messages: a path as given, a URI without its password, a camera as ``camera 0``."""
    if isinstance(source, int):
        return f"camera {source}"
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    text = str(source)
    return redact(text) if "://" in text else text


def error_reason(error: BaseException) -> str:
    """A short one-line reason for a library exception, without repeating the file name PyAV appends."""
    message = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return one_line(message)
