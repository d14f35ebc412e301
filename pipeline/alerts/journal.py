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
        self._blocks = threading.local()  # this thread's open group_commit blocks (`depth`)
        self._unsynced = False  # lines written since the last fsync
        self._sync_error: OSError | None = None

    def append(self, record: Mapping[str, Any] | bytes) -> None:
        """Write one record (a mapping, or the exact JSON bytes of one) as a line, durably: at once, or when the
        calling thread's `group_commit` block ends."""
        line = record if isinstance(record, bytes) else canonical_json(record)
        if b"\n" in line:
            raise ValueError(f"{self.path}: a record must be one line of JSON")
        with self._lock:
            if self._file is None:
                raise ValueError(f"{self.path}: journal is closed")
            self._check_synced()
            self._file.write(line + b"\n")
            self._file.flush()
            self._unsynced = True
            if not getattr(self._blocks, "depth", 0):
                self._sync()

    @contextmanager
    def group_commit(self) -> Iterator[JsonlJournal]:
        """The calling thread's appends inside the block are durable when it ends (one fsync for all of them);
        blocks may nest. If that fsync fails, the journal refuses every later append and block (`OSError`): the
        lines since the last sync may be lost, so the caller must not acknowledge them, nor anything after."""
        with self._lock:
            self._check_synced()
        self._blocks.depth = getattr(self._blocks, "depth", 0) + 1
        try:
            yield self
        finally:
            self._blocks.depth -= 1
            if not self._blocks.depth:
                with self._lock:
                    if self._file is not None:
                        self._sync()

    def _sync(self) -> None:
        """fsync what was written since the last one; a failure is kept, see `_check_synced` (under the lock)."""
        if not self._unsynced:
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._sync_error = exc
            raise
        self._unsynced = False

    def _check_synced(self) -> None:
        """OSError once an fsync has failed: the kernel may have dropped the unsynced lines, and a later fsync can
        succeed without writing them, so nothing more is written until the journal is reopened (under the lock)."""
        if self._sync_error is not None:
            raise OSError(self._sync_error.errno, f"an earlier fsync failed ({self._sync_error.strerror}), so lines "
                          "written since the last one may be lost; restart to reopen the journal", str(self.path))

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
            self._unsynced, self._sync_error = False, None
            self._file = self._open_for_append()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._sync()
                finally:
                    self._file.close()
                    self._file = None

    def _open_for_append(self):
        created = not self.path.exists()
        handle = open(self.path, "ab")
        if created:
            fsync_path(self.path.parent)
        return handle

    def _load(self) -> list[dict[str, Any]]:
        """The records, after cutting off a torn tail: what follows the last newline, or lines that are not JSON
        with no JSON value after them (a group commit's lines that a power cut caught before their sync)."""
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
            try:
                record = json.loads(line)
            except ValueError as exc:  # a torn write, if no whole JSON value follows
                first_bad = first_bad or (number, f"not JSON: {exc}", start)
                continue
            if first_bad is not None:  # a whole value after a bad line: not a torn tail
                raise JournalError(self.path, first_bad[0], first_bad[1])
            if not isinstance(record, dict):  # a whole value is never a torn write
                raise JournalError(self.path, number, "a record must be a JSON object")
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

