"""The alert log: every alert appended once to a JSONL file, durably, even when a clip is delivered twice."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pipeline.alerts.alert import Alert
from pipeline.alerts.errors import JournalError, SinkClosedError
from pipeline.alerts.journal import JsonlJournal


class JsonlSink:
    """Appends each alert's body (``alert.schema.json``) as one line; an idempotency key is written at most once.

    The keys already in the file are read when it is opened, so a clip redelivered after a restart is still
    recognised. Thread-safe.

        with JsonlSink("alerts.jsonl") as sink:
            sink.write(alert)        # True: written; False: this key is already in the file
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._journal = JsonlJournal(self.path)
        self._keys: set[str] = set()
        for number, record in enumerate(self._journal.existing, start=1):
            key = record.get("idempotency_key")
            if not isinstance(key, str):
                raise JournalError(self.path, number, "alert line without an idempotency_key")
            self._keys.add(key)
        self._journal.existing = []
        self._lock = threading.Lock()
        self._closed = False

    def write(self, alert: Alert) -> bool:
        """Append `alert` unless its key is already in the file; returns whether a line was written."""
        with self._lock:
            if self._closed:
                raise SinkClosedError(f"{self.path}: alert sink is closed")
            if alert.idempotency_key in self._keys:
                return False
            self._journal.append(alert.to_json_bytes())
            self._keys.add(alert.idempotency_key)
            return True

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._journal.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
