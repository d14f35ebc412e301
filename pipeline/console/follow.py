"""Feeding the console from a run's output folder: its JSONL logs read into the store, and followed while they grow.

The folder is what ``clipwatch run`` and ``clipwatch demo`` write: ``alerts.jsonl`` (the alert log),
``verdicts.jsonl`` (every verdict), ``health.jsonl`` (stream health changes) and ``thumbnails/``; any of them may
be missing or appear later (a pipeline that is starting). Each file is read from the offset the store recorded,
complete lines only (the writer may be halfway through one), in bounded chunks. A file whose first line changed,
or that became shorter than what was read, was replaced (a new run in the same folder): the store forgets the old
run's alerts and cameras and reads everything again; its reviews stay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.console.store import ConsoleStore

__all__ = ["RUN_FILES", "RunFollower"]

logger = logging.getLogger(__name__)

RUN_FILES = {"health": "health.jsonl", "verdicts": "verdicts.jsonl", "alerts": "alerts.jsonl"}
"""What the follower reads in a run folder, in this order (a camera's state before its alerts)."""
THUMBNAILS = "thumbnails"


class RunFollower:
    """Reads run folder `run_dir` into `store` (`catch_up`), and keeps doing so every `poll_s` once started."""

    def __init__(self, store: ConsoleStore, run_dir: str | Path, *, poll_s: float = 0.5, chunk_bytes: int = 1 << 20):
        self.store = store
        self.run_dir = Path(run_dir)
        self.poll_s = poll_s
        self.chunk_bytes = chunk_bytes
        self._apply: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
            "health": store.add_health, "verdicts": store.add_verdicts, "alerts": store.add_alerts}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def thumbnails_dir(self) -> Path:
        return self.run_dir / THUMBNAILS

    def catch_up(self) -> int:
        """Read what the files gained since the last call (everything after a replacement); returns the lines read."""
        identities = {name: self._identity(self.run_dir / file) for name, file in RUN_FILES.items()}
        if any(self._replaced(name, identity) for name, identity in identities.items()):
            logger.warning("console: the files of %s were replaced (a new run?); reading them again", self.run_dir)
            self.store.reset_run()
        return sum(self._read(name, identities[name]) for name in RUN_FILES if identities[name] is not None)

    def start(self) -> RunFollower:
        self._thread = threading.Thread(target=self._follow, name="console-follow", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.catch_up()
            except Exception as error:  # a bad moment (a file mid-replacement) must not end the following
                logger.warning("console: reading %s failed, retrying: %s", self.run_dir, error)

    def _replaced(self, name: str, identity: str | None) -> bool:
        known = self.store.source(name)
        if known is None or identity is None:
            return False
        size = (self.run_dir / RUN_FILES[name]).stat().st_size
        return known[0] != identity or size < known[1]

    def _identity(self, path: Path) -> str | None:
        """The SHA-256 of the file's first line (timestamped, so it differs between runs); None until it has one."""
        try:
            with open(path, "rb") as handle:
                head = b""
                while b"\n" not in head and len(head) < 1 << 16 and (more := handle.read(4096)):
                    head += more
        except FileNotFoundError:
            return None
        end = head.find(b"\n")
        return hashlib.sha256(head[:end]).hexdigest() if end >= 0 else None

    def _read(self, name: str, identity: str) -> int:
        path = self.run_dir / RUN_FILES[name]
        known = self.store.source(name)
        offset = known[1] if known is not None else 0
        lines = 0
        with open(path, "rb") as handle:
            handle.seek(offset)
            while True:
                chunk = handle.read(self.chunk_bytes)
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    if len(chunk) < self.chunk_bytes:
                        break  # nothing, or an incomplete last line: next time
                    skipped = self._skip_long_line(handle, path, offset)
                    if skipped is None:
                        break
                    offset = skipped
                    self.store.set_source(name, identity, offset)
                    continue
                records = self._parse(path, offset, chunk[:end])
                if records:
                    self._apply[name](records)
                lines += chunk.count(b"\n", 0, end)
                offset += end
                handle.seek(offset)
                self.store.set_source(name, identity, offset)
        return lines

    def _parse(self, path: Path, offset: int, data: bytes) -> list[dict[str, Any]]:
        records = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                logger.warning("console: %s after byte %d: a line that is not JSON skipped: %s", path, offset, error)
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def _skip_long_line(self, handle, path: Path, start: int) -> int | None:
        """Skip a line longer than a chunk (no log line is that long): the offset after it, None if it has no end
        yet. The handle is past the line's first chunk."""
        while chunk := handle.read(self.chunk_bytes):
            end = chunk.find(b"\n")
            if end >= 0:
                offset = handle.tell() - len(chunk) + end + 1
                logger.warning("console: %s: a line of %d bytes at byte %d skipped", path, offset - start, start)
                handle.seek(offset)
                return offset
        return None
