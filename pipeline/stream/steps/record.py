"""Record step: a verdict → alert rules → durable alert log, thumbnails, signed webhooks, verdict log; and the
health log of stream events.

`SinkStep` handles one verdict: evaluate the alert rules, and for an alert store its thumbnail, append it to the
alert JSONL (once per idempotency key, fsync'd) and hand it to the webhook sink (whose ledger is written before
`submit` returns); then record the verdict in the verdict log (optional, once per clip key). Only then may the
caller acknowledge the verdict, so an alert is never lost to a crash, and the idempotency keys keep a redelivered
verdict from alerting twice. The rules are a state machine over each stream's clips in sequence: the caller hands
verdicts over in order (see `pipeline.stream.reorder`).

A caller that records a batch does it inside ``with step.group_commit():`` and acknowledges after the block: the
verdict log (and the health log) then costs one fsync per batch. The alert log keeps its fsync per alert, so an
alert is on disk before its verdict's line can be.

Restarts: the verdict log is the rules' commit log. On start the step replays it through the rules (k-of-n windows,
cooldowns on the stream clock, each stream's position), so the state is what it was, and a verdict whose key is
already in the log is not evaluated again. Without a verdict log the rules start empty after a restart: windows
and cooldowns forget the past, and a redelivered verdict can alert again (a warning says so at start).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from pipeline.alerts import Alert, AlertRules, JsonlSink, ScoredClip, WebhookConfig, WebhookSink, store_thumbnail
from pipeline.alerts.errors import AlertInputError, JournalError
from pipeline.alerts.journal import JsonlJournal
from pipeline.config import AlertsConfig
from pipeline.stream.messages import HealthMessage, VerdictMessage

__all__ = ["HealthLog", "SinkStep", "VerdictLog", "format_alert", "scored_clip", "verdict_record"]

logger = logging.getLogger(__name__)


def scored_clip(verdict: VerdictMessage) -> ScoredClip:
    """What the alert rules read; a live clip without timestamps is placed at its decode time."""
    data: dict[str, Any] = verdict.model_dump()
    if not all(math.isfinite(p) for p in verdict.pts):
        moment = verdict.timestamps.get("decoder", verdict.timestamps.get("density"))
        data["clip_start"] = data["clip_end"] = moment
    return ScoredClip.from_mapping(data)


def verdict_record(verdict: VerdictMessage, clip: ScoredClip | None = None) -> dict[str, Any]:
    """The verdict log line of a verdict, a stable schema for external readers: ``prediction`` is the class name,
    ``prediction_index`` its index, and the clip times are the ones the rules read (finite, unlike a live
    stream's ``pts``, which are left out)."""
    clip = clip or scored_clip(verdict)
    return {
        "clip_key": verdict.key, "stream_id": verdict.stream_id, "seq": verdict.seq, "verdict": verdict.verdict,
        "fused_score": verdict.fused_score, "p_value": verdict.p_value, "reasons": verdict.reasons,
        "prediction": verdict.class_name, "prediction_index": verdict.prediction,
        "softmax_max": verdict.softmax_max, "log_likelihoods": verdict.log_likelihoods,
        "clip_start": clip.clip_start, "clip_end": clip.clip_end,
        "label": verdict.label, "source": verdict.source, "model_id": verdict.model_id,
        "timestamps": verdict.timestamps,
        **({"camera_p_values": verdict.camera_p_values} if verdict.camera_p_values else {}),
    }


def record_clip(record: dict[str, Any]) -> ScoredClip:
    """The scored clip the rules read for a verdict log line (lines of older versions may lack the class name
    and have null clip times)."""
    data = dict(record)
    if data.get("prediction") is None and data.get("prediction_index") is not None:
        data["prediction"] = str(data["prediction_index"])
    if data.get("clip_start") is None or data.get("clip_end") is None:
        stamps = data.get("timestamps") or {}
        data["clip_start"] = data["clip_end"] = stamps.get("decoder", stamps.get("density"))
    return ScoredClip.from_mapping(data)


class VerdictLog:
    """Every verdict as one JSON line, once per clip key (keys already in the file are known after a restart).

    `existing` holds the records the file had when opened, for the sink to replay once (then cleared).
    """

    def __init__(self, path: str | Path):
        self._journal = JsonlJournal(path)
        self.path = self._journal.path
        self.existing = self._journal.existing
        self._keys = {record.get("clip_key") for record in self.existing}
        self._journal.existing = []

    def write(self, verdict: VerdictMessage, clip: ScoredClip | None = None) -> bool:
        """Append the verdict unless its clip key is already in the log; returns whether it was written."""
        if verdict.key in self._keys:
            return False
        self._journal.append(verdict_record(verdict, clip))
        self._keys.add(verdict.key)
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def group_commit(self):
        """Lines written inside the block are durable when it ends (see `JsonlJournal.group_commit`)."""
        return self._journal.group_commit()

    def close(self) -> None:
        self._journal.close()


def format_alert(alert: Alert, width: int = 160) -> str:
    """One line for a terminal, at most `width` characters: kind, clip, p-value, fused score, prediction and the
    first reason (the others are counted; all of them are in the alert log)."""
    clip = alert.clip
    p_value = "n/a" if clip.p_value is None else f"{clip.p_value:.4f}"
    softmax = "" if clip.softmax is None else f" ({clip.softmax:.2f})"
    line = f"ALERT {alert.kind} {clip.clip_key} p={p_value} fused={clip.fused_score:.3f} prediction={clip.prediction}{softmax}"
    if clip.reasons:
        more = f" (+{len(clip.reasons) - 1} more)" if len(clip.reasons) > 1 else ""
        line += f": {clip.reasons[0]}{more}"
    return line if len(line) <= width else line[:width - 1] + "…"


class SinkStep:
    """One verdict → alert rules, for an alert: thumbnail, alert log, webhooks; then the verdict log.

    `positions` holds each stream's highest seq in the verdict log when opened and its decode time (unix s), where
    the reorder buffer resumes after a restart.
    """

    def __init__(self, rules: AlertRules, alert_log: JsonlSink, *, webhooks: WebhookSink | None = None,
                 thumbnails_dir: str | Path | None = None, verdict_log: VerdictLog | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 on_verdict: Callable[[VerdictMessage], None] | None = None):
        self.rules = rules
        self.alert_log = alert_log
        self.webhooks = webhooks
        self.thumbnails_dir = Path(thumbnails_dir) if thumbnails_dir is not None else None
        self.verdict_log = verdict_log
        self.on_alert = on_alert
        self.on_verdict = on_verdict
        self.positions: dict[str, tuple[int, float | None]] = {}
        if verdict_log is not None:
            self._rebuild()
        elif rules.stateful:
            logger.warning("sink: alerts.verdicts_jsonl is not set, so after a restart the alert rules start empty: "
                           "k-of-n windows and cooldowns forget earlier clips, and redelivered verdicts are "
                           "evaluated again (repeat alerts are possible); set it to keep alerting exact")

    def __call__(self, verdict: VerdictMessage) -> Alert | None:
        """Record one verdict durably; returns the alert it raised (None if none). AlertInputError if malformed.

        A verdict already in the verdict log is not evaluated again: its earlier alert is returned if the rules still
        remember it, else None; nothing is written.
        """
        clip = scored_clip(verdict)
        if self.verdict_log is not None and verdict.key in self.verdict_log:
            return self.rules.recall(clip.stream_id, clip.seq)
        alert = self.rules.evaluate(clip)
        if alert is not None:
            alert = self._publish(alert)
        if self.verdict_log is not None:
            self.verdict_log.write(verdict, clip)
        if self.on_verdict is not None:
            self.on_verdict(verdict)
        return alert

    @contextmanager
    def group_commit(self) -> Iterator[None]:
        """Verdicts recorded inside the block are durable when it ends: acknowledge them after it."""
        with self.verdict_log.group_commit() if self.verdict_log is not None else nullcontext():
            yield

    def _publish(self, alert: Alert) -> Alert:
        """Thumbnail, alert log, webhooks (each idempotent), then the callbacks for a new alert."""
        if self.thumbnails_dir is not None:
            alert = store_thumbnail(alert, self.thumbnails_dir)
        written = self.alert_log.write(alert)
        if self.webhooks is not None:
            self.webhooks.submit(alert)
        if written and self.on_alert is not None:
            self.on_alert(alert)
        return alert

    def _rebuild(self) -> None:
        """Replay the verdict log through the rules, in its order: the state (windows, cooldowns, positions) is
        the one the logged verdicts left, so new verdicts get the answers a run without the restart gives."""
        records, self.verdict_log.existing = self.verdict_log.existing, []
        for number, record in enumerate(records, start=1):
            try:
                clip = record_clip(record)
            except AlertInputError as error:
                raise JournalError(self.verdict_log.path, number, str(error)) from None
            self.rules.evaluate(clip)
            if clip.seq >= self.positions.get(clip.stream_id, (-1, None))[0]:
                self.positions[clip.stream_id] = (clip.seq, (record.get("timestamps") or {}).get("decoder"))
        if records:
            logger.info("sink: rule state rebuilt from %d verdicts of %d streams in %s", len(records),
                        len(self.positions), self.verdict_log.path)

    @classmethod
    def from_config(cls, config: AlertsConfig, webhook_config: WebhookConfig | None = None, *,
                    on_alert: Callable[[Alert], None] | None = None,
                    on_verdict: Callable[[VerdictMessage], None] | None = None) -> SinkStep:
        return cls(AlertRules(config.rules), JsonlSink(config.jsonl),
                   webhooks=WebhookSink(webhook_config) if webhook_config is not None else None,
                   thumbnails_dir=config.thumbnails_dir,
                   verdict_log=VerdictLog(config.verdicts_jsonl) if config.verdicts_jsonl is not None else None,
                   on_alert=on_alert, on_verdict=on_verdict)

    def close(self, flush_timeout_s: float = 30.0) -> None:
        """Flush webhooks (up to the timeout; the rest stays in the ledger for a restart) and close the logs."""
        if self.webhooks is not None and not self.webhooks.close(flush_timeout_s):
            logger.warning("sink: %d webhook deliveries left in the ledger for the next start",
                           self.webhooks.stats.pending)
        self.alert_log.close()
        if self.verdict_log is not None:
            self.verdict_log.close()


class HealthLog:
    """Stream health events: logged (a warning unless up or ended), optionally appended to a JSONL file."""

    def __init__(self, path: str | Path | None = None):
        self.journal = JsonlJournal(path) if path is not None else None
        if self.journal is not None:
            self.journal.existing = []

    def __call__(self, event: HealthMessage) -> None:
        level = logging.INFO if event.state in ("up", "ended") else logging.WARNING
        logger.log(level, "stream %s %s%s", event.stream_id, event.state, f": {event.detail}" if event.detail else "")
        if self.journal is not None:
            self.journal.append({"stream_id": event.stream_id, "state": event.state, "detail": event.detail,
                                 "time": event.time})

    def group_commit(self):
        """Events logged inside the block are durable when it ends: acknowledge them after it."""
        return self.journal.group_commit() if self.journal is not None else nullcontext()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
