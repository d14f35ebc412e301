"""Alerts grouped into Frigate-style *events*, one per camera and kind, and each camera's current state.

An alert rule fires once per clip that completes it (then again after each cooldown), so a person walking through
a yard for two minutes raises a train of alerts. Subscribers (Home Assistant, Node-RED, Frigate-style consumers)
want one event with a beginning and an end, so `EventTracker` merges them:

* ``new``: an alert of kind K for camera C while C has no open K event opens one; its id is that alert's
  idempotency key (``"C:seq:K"``), so the event links to the alert log and the webhooks.
* ``update``: a further alert of kind K for C while the event is open.
* ``end``: the event closes when C's verdicts are back to ``normal`` for `normal_clips_to_end` clips in a row
  (``end_reason: "normal"``), when no clip of C was judged K for `timeout_s` seconds, for instance the camera went
  offline (``"timeout"``), or when the sink shuts down (``"shutdown"``).

Each transition is ``{"type": ..., "before": snapshot, "after": snapshot}`` (for ``new`` both are the first
snapshot, as Frigate does). A camera's state is ``normal``, or the kind of its most severe open event
(``adversarial`` before ``novel``). The tracker does no I/O and reads no clock: the caller passes ``now``
(unix seconds), so its output is deterministic; it is not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.alerts.alert import Alert

SEVERITY = ("adversarial", "novel")
"""Kinds in the order a camera's state reports them when several events are open (others follow by name)."""


@dataclass(frozen=True)
class Change:
    """One output of the tracker: an event transition to publish (`payload`), or a camera whose state changed."""

    what: Literal["event", "state"]
    camera: str
    payload: dict[str, Any] | None = None


@dataclass
class _Event:
    id: str
    camera: str
    label: str
    start_time: float
    last_seen: float
    alerts: int = 0
    first_seq: int = 0
    last_seq: int = 0
    min_p_value: float | None = None
    alert: dict[str, Any] = field(default_factory=dict)
    end_time: float | None = None
    end_reason: str | None = None

    def add(self, alert: Alert, now: float) -> None:
        p_value = alert.clip.p_value
        if p_value is not None and (self.min_p_value is None or p_value < self.min_p_value):
            self.min_p_value = p_value
        self.alerts += 1
        self.last_seq = max(self.last_seq, alert.seq)
        self.alert = alert.to_body()
        self.last_seen = now

    def snapshot(self) -> dict[str, Any]:
        verdict = self.alert.get("verdict", {})
        return {
            "id": self.id, "camera": self.camera, "label": self.label,
            "start_time": self.start_time, "end_time": self.end_time, "end_reason": self.end_reason,
            "alerts": self.alerts, "first_seq": self.first_seq, "last_seq": self.last_seq,
            "p_value": verdict.get("p_value"), "min_p_value": self.min_p_value,
            "fused_score": verdict.get("fused_score"), "alert": self.alert,
        }


@dataclass
class _Camera:
    events: dict[str, _Event] = field(default_factory=dict)
    normal_run: int = 0
    changed_at: float = 0.0


class EventTracker:
    """Alerts and verdicts in, event transitions and camera-state changes out (see the module docstring)."""

    def __init__(self, timeout_s: float = 60.0, normal_clips_to_end: int = 3):
        if timeout_s <= 0 or normal_clips_to_end < 1:
            raise ValueError("timeout_s must be > 0 and normal_clips_to_end >= 1")
        self.timeout_s = timeout_s
        self.normal_clips_to_end = normal_clips_to_end
        self._cameras: dict[str, _Camera] = {}

    @property
    def cameras(self) -> list[str]:
        """Every camera seen so far (by alert or verdict)."""
        return list(self._cameras)

    def alert(self, alert: Alert, now: float) -> list[Change]:
        """An alert: opens an event (``new``) or extends the open one of its camera and kind (``update``)."""
        changes = self.expire(now)
        camera, changes = self._camera(alert.stream_id, now, changes)
        camera.normal_run = 0
        event = camera.events.get(alert.kind)
        if event is None:
            event = _Event(alert.idempotency_key, alert.stream_id, alert.kind, alert.clip.scored_at, now,
                           first_seq=alert.seq, last_seq=alert.seq)
            event.add(alert, now)
            camera.events[alert.kind] = event
            snapshot = event.snapshot()
            return [*changes, Change("event", event.camera, {"type": "new", "before": snapshot, "after": snapshot}),
                    self._state_changed(event.camera, now)]
        before = event.snapshot()
        event.add(alert, now)
        return [*changes, Change("event", event.camera, {"type": "update", "before": before,
                                                         "after": event.snapshot()})]

    def verdict(self, camera_id: str, verdict: str, now: float) -> list[Change]:
        """A verdict of `camera_id`: a clip of an open event's kind keeps it open; `normal_clips_to_end` normal
        clips in a row end the camera's events. A camera's first verdict publishes its (normal) state."""
        changes = self.expire(now)
        camera, changes = self._camera(camera_id, now, changes)
        if verdict != "normal":
            camera.normal_run = 0
            if verdict in camera.events:
                camera.events[verdict].last_seen = now
            return changes
        camera.normal_run += 1
        if camera.normal_run >= self.normal_clips_to_end and camera.events:
            changes += self._end(camera_id, list(camera.events), now, "normal")
        return changes

    def expire(self, now: float) -> list[Change]:
        """End the events with no clip of their kind for `timeout_s` seconds."""
        changes: list[Change] = []
        for camera_id, camera in self._cameras.items():
            stale = [kind for kind, event in camera.events.items() if now - event.last_seen >= self.timeout_s]
            if stale:
                changes += self._end(camera_id, stale, now, "timeout")
        return changes

    def end_all(self, now: float, reason: str = "shutdown") -> list[Change]:
        """End every open event (the sink is stopping: a restarted one knows nothing of them)."""
        changes: list[Change] = []
        for camera_id, camera in self._cameras.items():
            if camera.events:
                changes += self._end(camera_id, list(camera.events), now, reason)
        return changes

    def next_deadline(self) -> float | None:
        """When the next event times out (unix seconds), None when none is open."""
        return min((event.last_seen + self.timeout_s for camera in self._cameras.values()
                    for event in camera.events.values()), default=None)

    def state(self, camera_id: str) -> dict[str, Any]:
        """The retained state of a camera: ``{"camera", "state", "events": {kind: event id}, "changed_at"}``."""
        camera = self._cameras.get(camera_id) or _Camera()
        kinds = sorted(camera.events, key=lambda kind: (SEVERITY.index(kind) if kind in SEVERITY else len(SEVERITY),
                                                        kind))
        return {"camera": camera_id, "state": kinds[0] if kinds else "normal",
                "events": {kind: camera.events[kind].id for kind in kinds}, "changed_at": camera.changed_at}

    def _camera(self, camera_id: str, now: float, changes: list[Change]) -> tuple[_Camera, list[Change]]:
        camera = self._cameras.get(camera_id)
        if camera is None:
            camera = self._cameras[camera_id] = _Camera(changed_at=now)
            changes = [*changes, Change("state", camera_id)]
        return camera, changes

    def _state_changed(self, camera_id: str, now: float) -> Change:
        self._cameras[camera_id].changed_at = now
        return Change("state", camera_id)

    def _end(self, camera_id: str, kinds: list[str], now: float, reason: str) -> list[Change]:
        camera, changes = self._cameras[camera_id], []
        for kind in kinds:
            event = camera.events.pop(kind)
            before = event.snapshot()
            event.end_time, event.end_reason = now, reason
            changes.append(Change("event", camera_id, {"type": "end", "before": before, "after": event.snapshot()}))
        return [*changes, self._state_changed(camera_id, now)]
