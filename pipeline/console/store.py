"""The console's SQLite store: alerts, their review state, and each camera's health and recent verdicts.

One connection in WAL mode behind a lock (readers and the one writer never see a half-applied batch; another
process may read the file meanwhile). What is kept is bounded per alert and per camera: a verdict only updates its
camera's counters and last `recent` labels and its stream's last seq (which makes replaying a verdict log
harmless), so a long run costs rows per alert and per stream, never per clip.

Reviews (acknowledged / dismissed / reopened) live apart from the alerts, keyed by the alert's idempotency key and
a fingerprint of its body: rebuilding the alerts from a run's files finds them again, while a different run that
reuses the same keys (a new demo in the same folder) does not inherit them. Every change is published to the
`EventHub` after its commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.alerts.alert import canonical_json
from pipeline.alerts.errors import AlertSchemaError
from pipeline.alerts.schema import validate_alert_body
from pipeline.console.errors import ConsoleError
from pipeline.console.events import EventHub

__all__ = ["REVIEW_STATES", "ConsoleStore", "camera_of"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REVIEW_STATES = {"ack": "acknowledged", "dismiss": "dismissed", "reopen": "open"}
"""API action → review state."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY, camera TEXT NOT NULL, stream_id TEXT NOT NULL, seq INTEGER NOT NULL,
    clip_key TEXT NOT NULL, kind TEXT NOT NULL, verdict TEXT, p_value REAL, fused_score REAL, prediction TEXT,
    softmax REAL, reasons TEXT NOT NULL, clip_start REAL, clip_end REAL, scored_at REAL NOT NULL,
    thumbnail_sha256 TEXT, thumbnail_uri TEXT, fingerprint TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (scored_at DESC, key DESC);
CREATE INDEX IF NOT EXISTS alerts_by_camera ON alerts (camera, scored_at DESC);
CREATE TABLE IF NOT EXISTS reviews (
    key TEXT NOT NULL, fingerprint TEXT NOT NULL, state TEXT NOT NULL, at REAL NOT NULL, by TEXT, note TEXT,
    PRIMARY KEY (key, fingerprint));
CREATE TABLE IF NOT EXISTS cameras (
    camera TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT 'unknown', detail TEXT NOT NULL DEFAULT '',
    state_stream TEXT, state_at REAL, counts TEXT NOT NULL DEFAULT '{}', recent TEXT NOT NULL DEFAULT '[]',
    last_verdict TEXT, last_clip_key TEXT, last_verdict_at REAL, alerts INTEGER NOT NULL DEFAULT 0,
    open_alerts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS streams (stream_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, identity TEXT NOT NULL, offset INTEGER NOT NULL);
"""

_ALERT_QUERY = """
SELECT a.*, r.state AS review_state, r.at AS review_at, r.by AS review_by, r.note AS review_note
FROM alerts a LEFT JOIN reviews r ON r.key = a.key AND r.fingerprint = a.fingerprint
"""


def camera_of(stream_id: str) -> str:
    """The camera a stream belongs to: a directory source's streams are ``<camera>/<recording>``; a URL (which has
    slashes of its own) and any other id is its own camera."""
    return stream_id if "://" in stream_id else stream_id.split("/", 1)[0]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ConsoleStore:
    """Alerts, reviews and camera states in the SQLite file `path` (created with its folder if missing)."""

    def __init__(self, path: str | Path, *, hub: EventHub | None = None, recent: int = 20):
        self.path = Path(path)
        self.hub = hub or EventHub()
        self.recent = recent
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConsoleError(f"{self.path}: console database of a newer clipwatch (schema {version})")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as error:
            raise ConsoleError(f"{self.path}: cannot open the console database: {error}") from None
        self._closed = False

    # -- writing ------------------------------------------------------------------------------------------------

    def add_alerts(self, bodies: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Store alert bodies (``alert.schema.json``) not stored yet; returns the new ones as the API shows them.
        A body that does not conform is skipped with a warning naming its problem."""
        rows = []
        for body in bodies:
            try:
                validate_alert_body(body)
            except AlertSchemaError as error:
                logger.warning("console: alert skipped: %s", error)
                continue
            rows.append(_alert_row(body))
        added, cameras = [], set()
        with self._transaction() as db:
            for row in rows:
                cursor = db.execute(f"INSERT OR IGNORE INTO alerts ({', '.join(row)}) VALUES "
                                    f"({', '.join('?' * len(row))})", tuple(row.values()))
                if cursor.rowcount:
                    reviewed = db.execute("SELECT state FROM reviews WHERE key = ? AND fingerprint = ?",
                                          (row["key"], row["fingerprint"])).fetchone()
                    is_open = int(reviewed is None or reviewed[0] == "open")
                    db.execute("INSERT OR IGNORE INTO cameras (camera) VALUES (?)", (row["camera"],))
                    db.execute("UPDATE cameras SET alerts = alerts + 1, open_alerts = open_alerts + ? WHERE camera = ?",
                               (is_open, row["camera"]))
                    added.append(row["key"])
                    cameras.add(row["camera"])
        alerts = [self.alert(key, detail=False) for key in added]
        for alert in alerts:
            self.hub.publish("alert", alert)
        self._publish_cameras(cameras)
        return alerts

    def add_verdicts(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Count verdict log records (``verdicts.jsonl`` lines) into their cameras; a record at or below its
        stream's last counted seq is a replay and is ignored. Returns how many were counted."""
        counted, changed = 0, set()
        with self._transaction() as db:
            last_seqs: dict[str, int] = {}
            cameras: dict[str, dict[str, Any]] = {}
            for record in records:
                stream, seq, verdict = record.get("stream_id"), record.get("seq"), record.get("verdict")
                if not isinstance(stream, str) or not isinstance(seq, int) or not isinstance(verdict, str):
                    logger.warning("console: verdict skipped: no stream_id, seq or verdict in %.80s", record)
                    continue
                if stream not in last_seqs:
                    found = db.execute("SELECT last_seq FROM streams WHERE stream_id = ?", (stream,)).fetchone()
                    last_seqs[stream] = found[0] if found else -1
                if seq <= last_seqs[stream]:
                    continue
                last_seqs[stream] = seq
                camera = cameras.get(camera_of(stream)) or self._camera_counters(db, camera_of(stream), cameras)
                camera["counts"][verdict] = camera["counts"].get(verdict, 0) + 1
                camera["recent"] = (camera["recent"] + [verdict])[-self.recent:]
                stamps = record.get("timestamps") or {}
                at = _number(stamps.get("density")) or _number(stamps.get("decoder"))
                camera.update(last_verdict=verdict, last_clip_key=f"{stream}:{seq}", last_verdict_at=at)
                counted += 1
            db.executemany("INSERT INTO streams (stream_id, last_seq) VALUES (?, ?) ON CONFLICT (stream_id) "
                           "DO UPDATE SET last_seq = excluded.last_seq", list(last_seqs.items()))
            for name, camera in cameras.items():
                db.execute("UPDATE cameras SET counts = ?, recent = ?, last_verdict = ?, last_clip_key = ?, "
                           "last_verdict_at = ? WHERE camera = ?",
                           (json.dumps(camera["counts"]), json.dumps(camera["recent"]), camera["last_verdict"],
                            camera["last_clip_key"], camera["last_verdict_at"], name))
                changed.add(name)
        self._publish_cameras(changed)
        return counted

    def add_health(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Apply stream health events (``health.jsonl`` lines: stream_id, state, detail, time): a camera's state
        is the latest event of any of its streams."""
        changed = set()
        with self._transaction() as db:
            for record in records:
                stream, state = record.get("stream_id"), record.get("state")
                if not isinstance(stream, str) or not isinstance(state, str):
                    logger.warning("console: health event skipped: no stream_id or state in %.80s", record)
                    continue
                at, detail, camera = _number(record.get("time")) or time.time(), str(record.get("detail") or ""), \
                    camera_of(stream)
                db.execute("INSERT OR IGNORE INTO cameras (camera) VALUES (?)", (camera,))
                cursor = db.execute(
                    "UPDATE cameras SET state = ?, detail = ?, state_stream = ?, state_at = ? WHERE camera = ? AND "
                    "(state_at IS NULL OR state_at <= ?) AND (state, detail, coalesce(state_stream, '')) != (?, ?, ?)",
                    (state, detail, stream, at, camera, at, state, detail, stream))
                if cursor.rowcount:
                    changed.add(camera)
        self._publish_cameras(changed)

    def review(self, key: str, action: str, *, by: str | None = None, note: str | None = None) -> dict[str, Any]:
        """Acknowledge, dismiss or reopen alert `key` (`action` one of `REVIEW_STATES`); returns the alert.
        KeyError if there is no such alert."""
        state = REVIEW_STATES[action]
        with self._transaction() as db:
            found = db.execute("SELECT fingerprint, camera FROM alerts WHERE key = ?", (key,)).fetchone()
            if found is None:
                raise KeyError(key)
            before = db.execute("SELECT state FROM reviews WHERE key = ? AND fingerprint = ?",
                                (key, found[0])).fetchone()
            was_open = before is None or before[0] == "open"
            if was_open != (state == "open"):
                db.execute("UPDATE cameras SET open_alerts = open_alerts + ? WHERE camera = ?",
                           (1 if state == "open" else -1, found[1]))
            db.execute("INSERT INTO reviews (key, fingerprint, state, at, by, note) VALUES (?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT (key, fingerprint) DO UPDATE SET state = excluded.state, at = excluded.at, "
                       "by = excluded.by, note = excluded.note", (key, found[0], state, time.time(), by, note))
        alert = self.alert(key, detail=False)
        self.hub.publish("review", alert)
        self._publish_cameras({found[1]})
        return alert

    # -- reading ------------------------------------------------------------------------------------------------

    def alerts(self, *, camera: str | None = None, kind: str | None = None, since: float | None = None,
               until: float | None = None, state: str | None = None, limit: int = 100) -> tuple[list[dict], int]:
        """The newest `limit` alerts matching every filter given (camera or exact stream id, kind, scored at or
        after `since` and before `until`, review state), and how many match in all."""
        where, args = [], []
        if camera:
            where.append("(a.camera = ? OR a.stream_id = ?)")
            args += [camera, camera]
        if kind:
            where.append("a.kind = ?")
            args.append(kind)
        if since is not None:
            where.append("a.scored_at >= ?")
            args.append(since)
        if until is not None:
            where.append("a.scored_at < ?")
            args.append(until)
        if state == "open":
            where.append("(r.state IS NULL OR r.state = 'open')")
        elif state:
            where.append("r.state = ?")
            args.append(state)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(f"{_ALERT_QUERY}{clause} ORDER BY a.scored_at DESC, a.key DESC LIMIT ?",
                                    (*args, limit)).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM alerts a LEFT JOIN reviews r ON r.key = a.key AND "
                                     f"r.fingerprint = a.fingerprint{clause}", args).fetchone()[0]
        return [_alert_json(row, detail=False) for row in rows], total

    def alert(self, key: str, *, detail: bool = True) -> dict[str, Any] | None:
        """Alert `key` as the API shows it (with its layer scores, smoothing and body when `detail`), or None."""
        with self._lock:
            row = self._db.execute(f"{_ALERT_QUERY} WHERE a.key = ?", (key,)).fetchone()
        return None if row is None else _alert_json(row, detail=detail)

    def thumbnail(self, key: str) -> tuple[str | None, str | None] | None:
        """(sha256, uri) of alert `key`'s thumbnail (either may be None), or None for an unknown alert."""
        with self._lock:
            row = self._db.execute("SELECT thumbnail_sha256, thumbnail_uri FROM alerts WHERE key = ?",
                                   (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def cameras(self, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every camera (or those in `only`), by name: state, verdict counts, recent verdicts, alert counts (kept
        as counters, so a camera's event costs the same whatever its number of alerts)."""
        names = None if only is None else sorted(set(only))
        clause = "" if names is None else f" WHERE c.camera IN ({', '.join('?' * len(names))})"
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM cameras c{clause} ORDER BY c.camera", names or ()).fetchall()
        return [_camera_json(row) for row in rows]

    # -- the files a run's follower has read --------------------------------------------------------------------

    def source(self, name: str) -> tuple[str, int] | None:
        """(identity, offset) recorded for followed file `name`, or None."""
        with self._lock:
            row = self._db.execute("SELECT identity, offset FROM sources WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], row[1])

    def set_source(self, name: str, identity: str, offset: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO sources (name, identity, offset) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                       "SET identity = excluded.identity, offset = excluded.offset", (name, identity, offset))

    def reset_run(self) -> None:
        """Forget the alerts, cameras, streams and file offsets (the run's files were replaced); reviews stay."""
        with self._transaction() as db:
            for table in ("alerts", "cameras", "streams", "sources"):
                db.execute(f"DELETE FROM {table}")
        self.hub.publish("reset", {"reason": "the run's files were replaced"})

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- helpers ------------------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise ConsoleError(f"{self.path}: console store is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _camera_counters(self, db: sqlite3.Connection, name: str, cache: dict[str, dict]) -> dict[str, Any]:
        db.execute("INSERT OR IGNORE INTO cameras (camera) VALUES (?)", (name,))
        row = db.execute("SELECT counts, recent FROM cameras WHERE camera = ?", (name,)).fetchone()
        cache[name] = {"counts": json.loads(row[0]), "recent": json.loads(row[1])}
        return cache[name]

    def _publish_cameras(self, names: set[str]) -> None:
        if names:
            for camera in self.cameras(names):
                self.hub.publish("camera", camera)


def _alert_row(body: Mapping[str, Any]) -> dict[str, Any]:
    verdict, stamps, thumbnail = body["verdict"], body["timestamps"], body.get("thumbnail") or {}
    return {
        "key": body["idempotency_key"], "camera": camera_of(body["stream_id"]), "stream_id": body["stream_id"],
        "seq": body["seq"], "clip_key": body["clip_key"], "kind": body["kind"], "verdict": verdict.get("verdict"),
        "p_value": verdict.get("p_value"), "fused_score": verdict.get("fused_score"),
        "prediction": verdict.get("prediction"), "softmax": verdict.get("softmax"),
        "reasons": json.dumps(verdict.get("reasons") or []), "clip_start": stamps.get("clip_start"),
        "clip_end": stamps.get("clip_end"), "scored_at": stamps["scored_at"],
        "thumbnail_sha256": thumbnail.get("sha256"), "thumbnail_uri": thumbnail.get("uri"),
        "fingerprint": hashlib.sha256(canonical_json(body)).hexdigest()[:32], "body": json.dumps(body),
    }


def _alert_json(row: sqlite3.Row, *, detail: bool) -> dict[str, Any]:
    key = row["key"]
    has_thumbnail = row["thumbnail_uri"] is not None  # stored as a file (alerts.thumbnails_dir); else none to show
    alert = {
        "key": key, "camera": row["camera"], "stream_id": row["stream_id"], "seq": row["seq"],
        "clip_key": row["clip_key"], "kind": row["kind"], "verdict": row["verdict"], "p_value": row["p_value"],
        "fused_score": row["fused_score"], "prediction": row["prediction"], "softmax": row["softmax"],
        "reasons": json.loads(row["reasons"]), "clip_start": row["clip_start"], "clip_end": row["clip_end"],
        "scored_at": row["scored_at"],
        "thumbnail": f"/api/alerts/{quote(key, safe='')}/thumbnail" if has_thumbnail else None,
        "review": {"state": row["review_state"] or "open", "at": row["review_at"], "by": row["review_by"],
                   "note": row["review_note"]},
    }
    if detail:
        body = json.loads(row["body"])
        alert.update(layer_scores=body["verdict"].get("layer_scores") or {}, smoothing=body.get("smoothing"),
                     body=body)
    return alert


def _camera_json(row: sqlite3.Row) -> dict[str, Any]:
    recent = json.loads(row["recent"])
    last = None
    if row["last_verdict"] is not None:
        last = {"verdict": row["last_verdict"], "clip_key": row["last_clip_key"], "at": row["last_verdict_at"]}
    return {
        "camera": row["camera"], "state": row["state"], "detail": row["detail"], "stream_id": row["state_stream"],
        "state_at": row["state_at"], "counts": json.loads(row["counts"]), "recent": recent,
        "recent_counts": {label: recent.count(label) for label in sorted(set(recent))},
        "last_verdict": last, "alerts": row["alerts"], "open_alerts": row["open_alerts"],
    }
