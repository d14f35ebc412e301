"""The root of clipwatch's errors, and the helpers that keep every error message to one line without secrets.

Every error clipwatch raises about its input (a config, a video, a bundle, a message, a dataset, a broker) derives
from `ClipwatchError`, and its text is one line naming what and why. The command line prints such an error as one
line and exits 2 (so does an OSError naming its file); anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

__all__ = ["ClipwatchError", "one_line", "redact", "validation_problem"]


class ClipwatchError(Exception):
    """Base of every error clipwatch raises about what it was given; the message is one line."""


def one_line(text: object) -> str:
    """`text` as a single line: whitespace runs (newlines included) collapse to one space."""
    return re.sub(r"\s+", " ", str(text)).strip()


def redact(uri: str) -> str:
    """`uri` without a password (``rtsp://user:secret@host`` → ``rtsp://user:***@host``), safe for logs and ids."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def validation_problem(error: ValidationError, *,
                       known_keys: Callable[[Sequence[object]], Sequence[str]] | None = None) -> str:
    """A pydantic error as one line: the first problem as ``key.path: reason``, then how many more there are.

    `known_keys(parent_path)` lists the keys allowed where an unknown key was found, to suggest the closest one.
    """
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    location = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        reason = "unknown key"
        if known_keys is not None and first["loc"]:
            close = difflib.get_close_matches(str(first["loc"][-1]), list(known_keys(first["loc"][:-1])), n=1,
                                              cutoff=0.6)
            reason += f" (did you mean {close[0]!r}?)" if close else ""
    elif first["type"] == "missing":
        reason = "required key is missing" if first["loc"] and isinstance(first["loc"][-1], str) else "missing"
    else:
        reason = one_line(first["msg"].removeprefix("Value error, "))
    more = len(problems) - 1
    text = f"{location}: {reason}" if location else reason
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
