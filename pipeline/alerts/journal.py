"""Append-only JSONL files that survive crashes: the alert log, the webhook delivery ledger, the dead letters.

Each record is one line written with a single ``write`` and then flushed and fsync'd. A crash can therefore only
leave a torn *last* line (or, after a group commit, a torn tail of lines), which is cut off (with a warning) when
the file is opened again; a bad line followed by a good one is corruption and raises `JournalError` naming the
file and line.

Group commit: inside ``with journal.group_commit():`` appends are written and flushed at once (a killed process
loses none of them) but made durable by one fsync when the block ends, so a caller that acknowledges its inputs
only after the block pays one disk sync per batch instead of one per record.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.alerts.alert import canonical_json
from pipeline.alerts.errors import JournalError
from pipeline.fileio import atomic_write, fsync_path

logger = logging.getLogger(__name__)


class JsonlJournal:
    """One JSONL file opened for appending; `existing` holds the records it had when opened."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.existing: list[dict[str, Any]] = self._load()
        self._lock = threading.Lock()
        self._file = self._open_for_append()
        self._deferred = 0  # open group_commit blocks
        self._unsynced = False

    def append(self, record: Mapping[str, Any] | bytes) -> None:
        """Write one record (a mapping, or the exact JSON bytes of one) as a line, durably."""
        line = record if isinstance(record, bytes) else canonical_json(record)
        if b"\n" in line:
            raise ValueError(f"{self.path}: a record must be one line of JSON")
        with self._lock:
            if self._file is None:
                raise ValueError(f"{self.path}: journal is closed")
            self._file.write(line + b"\n")
            self._file.flush()
            if self._deferred:
                self._unsynced = True
            else:
                os.fsync(self._file.fileno())

    @contextmanager
    def group_commit(self) -> Iterator[JsonlJournal]:
        """Appends inside the block are durable when it ends (one fsync for all of them); blocks may nest."""
        with self._lock:
            self._deferred += 1
        try:
            yield self
        finally:
            with self._lock:
                self._deferred -= 1
                if not self._deferred and self._unsynced and self._file is not None:
                    os.fsync(self._file.fileno())
                    self._unsynced = False

    def rewrite(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Atomically replace the file's content with `records` (used to compact a ledger on start)."""
        with self._lock:
            if self._file is not None:
                self._file.close()

            def write(tmp: str) -> None:
                with open(tmp, "wb") as handle:
                    for record in records:
                        handle.write(canonical_json(record) + b"\n")

            atomic_write(self.path, write, durable=True)
            self._unsynced = False
            self._file = self._open_for_append()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                if self._unsynced:
                    os.fsync(self._file.fileno())
                    self._unsynced = False
                self._file.close()
                self._file = None

    def _open_for_append(self):
        created = not self.path.exists()
        handle = open(self.path, "ab")
        if created:
            fsync_path(self.path.parent)
        return handle

    def _load(self) -> list[dict[str, Any]]:
        """The records, after cutting off a torn tail: what follows the last newline, or bad lines with no good
        line after them (a group commit's lines that a power cut caught before their sync)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records: list[dict[str, Any]] = []
        first_bad: tuple[int, str, int] | None = None  # line number, problem, byte offset
        offset = 0
        for number, line in enumerate(data.split(b"\n")[:-1], start=1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            record, problem = _parse(line)
            if problem is not None:
                first_bad = first_bad or (number, problem, start)
            elif first_bad is not None:  # a good line after a bad one: not a torn tail
                raise JournalError(self.path, first_bad[0], first_bad[1])
            else:
                records.append(record)
        end = first_bad[2] if first_bad is not None else data.rfind(b"\n") + 1
        if end < len(data):
            torn = data[end:].count(b"\n") + (not data.endswith(b"\n"))
            what = "a torn last line" if torn == 1 else f"a torn tail of {torn} lines"
            logger.warning("%s: cutting off %s (%d bytes) left by a crash", self.path, what, len(data) - end)
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        return records


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a line holding a JSON object, else ``(None, why not)``."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(record, dict):
        return None, "a record must be a JSON object"
    return record, None
