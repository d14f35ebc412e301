"""Append-only JSONL files that survive crashes: the alert log, the webhook delivery ledger, the dead letters.

Each record is one line written with a single ``write`` and then flushed and fsync'd. A crash can therefore only
leave a torn *last* line, which is cut off (with a warning) when the file is opened again; a bad line anywhere
else is corruption and raises `JournalError` naming the file and line.

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
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning("%s: cutting off a torn last line (%d bytes) left by a crash", self.path, len(data) - end)
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        records = []
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise JournalError(self.path, number, f"not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise JournalError(self.path, number, "a record must be a JSON object")
            records.append(record)
        return records
