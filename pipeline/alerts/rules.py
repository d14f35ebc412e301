"""Alert rules: which verdicts alert, k-of-n smoothing per stream, cooldown per stream and kind.

A pure, deterministic state machine: `AlertRules.evaluate` reads nothing but the clip (no wall clock, no I/O), so
replaying the same verdicts in the same order raises the same alerts.

Semantics, per stream:

* A clip *counts* for kind K when its verdict is K, K is configured, and it passes K's optional thresholds
  (``max_p_value``, ``min_fused_score``, ``max_fused_score``; with ``max_p_value`` set, a clip without a p-value
  does not count).
* The window is the last ``n`` sequence numbers ``(seq - n, seq]``: a missing seq (a dropped clip) counts as not
  alerting. An alert of kind K is raised by a clip that counts for K when at least ``k`` clips of the window count
  for K. While the condition keeps holding, every further counting clip raises again, unless the cooldown holds it.
* Cooldown: after an alert of kind K, no other alert of kind K for ``cooldown_s`` seconds of the **stream clock**
  (the clips' ``clip_end`` pts) by default, which keeps replays deterministic; ``cooldown_clock="scored_at"`` uses
  the scoring time instead. A clock that goes backwards (a live stream restarted its pts) ends the cooldown.
* A clip whose seq was already evaluated (a redelivery) gets the same answer again and changes nothing. A clip
  older than the newest seen (out of order) is recorded for later windows but raises nothing.

The state lives in memory; the sink rebuilds it after a restart by replaying its verdict log through `evaluate`
(the same clips in the same order give the same state, since no wall clock is read), and guards each stream's
seq against implausible jumps before clips get here (`workers.reorder`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.alerts.alert import Alert, ScoredClip, Smoothing
from pipeline.alerts.errors import validate_config

_MIN_MEMORY = 128
"""Seqs remembered per stream, at least: redeliveries within this many clips get their earlier answer."""


class KindRule(BaseModel):
    """How one verdict kind alerts: ``k`` of the last ``n`` clips, a cooldown, optional thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(1, ge=1, description="counting clips needed in the window")
    n: int = Field(1, ge=1, description="window length in clips (sequence numbers)")
    cooldown_s: float = Field(0.0, ge=0.0, description="seconds without a second alert of this kind per stream")
    max_p_value: float | None = Field(
        None, ge=0.0, le=1.0, description="count only clips with p_value <= this (a clip without p_value: never)"
    )
    min_fused_score: float | None = Field(None, description="count only clips with fused_score >= this")
    max_fused_score: float | None = Field(None, description="count only clips with fused_score <= this")

    @model_validator(mode="after")
    def _check(self) -> KindRule:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        if None not in (self.min_fused_score, self.max_fused_score) and self.min_fused_score > self.max_fused_score:
            raise ValueError("min_fused_score must not exceed max_fused_score")
        return self

    def admits(self, clip: ScoredClip) -> bool:
        """Whether `clip` (whose verdict is this rule's kind) passes the thresholds."""
        return (
            (self.max_p_value is None or (clip.p_value is not None and clip.p_value <= self.max_p_value))
            and (self.min_fused_score is None or clip.fused_score >= self.min_fused_score)
            and (self.max_fused_score is None or clip.fused_score <= self.max_fused_score)
        )


class AlertRulesConfig(BaseModel):
    """Alerting configuration: one `KindRule` per alerting verdict (default: ``novel`` and ``adversarial``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: dict[str, KindRule] = Field(default_factory=lambda: {"novel": KindRule(), "adversarial": KindRule()})
    cooldown_clock: Literal["stream", "scored_at"] = "stream"


@dataclass
class _Seen:
    kind: str | None
    alert: Alert | None = None


@dataclass
class _StreamState:
    seen: OrderedDict[int, _Seen] = field(default_factory=OrderedDict)
    newest: int = -1
    last_alert_time: dict[str, float] = field(default_factory=dict)


class AlertRules:
    """The alerting state machine; one instance holds the state of every stream it has seen.

        rules = AlertRules({"kinds": {"novel": {"k": 2, "n": 3, "cooldown_s": 30}}})
        alert = rules.evaluate(scored_clip)      # Alert or None
    """

    def __init__(self, config: AlertRulesConfig | Mapping | None = None):
        self.config = validate_config(AlertRulesConfig, config, "alert rules")
        self._memory = max([_MIN_MEMORY, *(rule.n for rule in self.config.kinds.values())])
        self._streams: dict[str, _StreamState] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("evaluated", "alerted", "smoothed_out", "cooled_down", "redelivered", "out_of_order"), 0
        )

    def evaluate(self, clip: ScoredClip | Mapping) -> Alert | None:
        """Feed one scored clip; returns the alert it raises, or None."""
        if not isinstance(clip, ScoredClip):
            clip = ScoredClip.from_mapping(clip)
        state = self._streams.setdefault(clip.stream_id, _StreamState())
        previous = state.seen.get(clip.seq)
        if previous is not None:
            self.counters["redelivered"] += 1
            return previous.alert
        self.counters["evaluated"] += 1
        rule = self.config.kinds.get(clip.verdict)
        counts = rule is not None and rule.admits(clip)
        entry = _Seen(kind=clip.verdict if counts else None)
        self._remember(state, clip.seq, entry)
        if clip.seq < state.newest:
            self.counters["out_of_order"] += 1
            return None
        state.newest = clip.seq
        if not counts:
            return None
        hits = tuple(
            s for s in range(max(0, clip.seq - rule.n + 1), clip.seq + 1)
            if (seen := state.seen.get(s)) is not None and seen.kind == clip.verdict
        )
        if len(hits) < rule.k:
            self.counters["smoothed_out"] += 1
            return None
        now = clip.clip_end if self.config.cooldown_clock == "stream" else clip.scored_at
        last = state.last_alert_time.get(clip.verdict)
        if last is not None and last <= now < last + rule.cooldown_s:
            self.counters["cooled_down"] += 1
            return None
        state.last_alert_time[clip.verdict] = now
        entry.alert = Alert.from_clip(clip, clip.verdict, Smoothing(k=rule.k, n=rule.n, seqs=hits))
        self.counters["alerted"] += 1
        return entry.alert

    def recall(self, stream_id: str, seq: int) -> Alert | None:
        """The alert (stream, seq) raised when it was evaluated, if it did and is still remembered; changes nothing."""
        state = self._streams.get(stream_id)
        seen = state.seen.get(seq) if state is not None else None
        return seen.alert if seen is not None else None

    @property
    def stateful(self) -> bool:
        """Whether an answer depends on earlier clips (a window over several clips, or a cooldown)."""
        return any(rule.n > 1 or rule.cooldown_s > 0 for rule in self.config.kinds.values())

    def forget(self, stream_id: str) -> None:
        """Drop a stream's state (e.g. the stream was removed); its next clip starts a fresh window and cooldown."""
        self._streams.pop(stream_id, None)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._streams)

    def _remember(self, state: _StreamState, seq: int, entry: _Seen) -> None:
        state.seen[seq] = entry
        if seq < state.newest:
            state.seen = OrderedDict(sorted(state.seen.items()))
        horizon = max(seq, state.newest) - self._memory
        while state.seen and next(iter(state.seen)) <= horizon:
            state.seen.popitem(last=False)
