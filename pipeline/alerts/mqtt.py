"""MQTT delivery (paho-mqtt 2): alerts as Frigate-style events, and each camera's state, retained.

Topics, under ``topic_prefix`` (default ``clipwatch``):

* ``<prefix>/events``: ``{"type": "new"|"update"|"end", "before": {...}, "after": {...}}``, one message per event
  transition (see `pipeline.alerts.events` for when alerts are merged into one event and when it ends).
* ``<prefix>/<camera>/state``, retained: ``{"camera", "state": "normal"|kind, "events": {kind: id}, "changed_at"}``;
  the camera id is percent-encoded (``videos/a.mp4`` → ``videos%2Fa.mp4``), so ``/``, ``+`` and ``#`` cannot form
  other topic levels or wildcards. Every state is published again after each (re)connection, so a broker restarted
  without persistence gets the retained states back.
* ``<prefix>/available``, retained: ``online`` while connected, ``offline`` after a clean stop or, as the broker's
  will, when the connection is lost.

Delivery never blocks the caller: `submit` and `observe` queue messages in memory and return. A publisher thread
hands them to paho while connected, at most `_IN_FLIGHT` unacknowledged at a time; paho reconnects with back-off
(1 s doubling to 30 s) and resends unacknowledged QoS 1/2 messages, and QoS 0 messages lost with a connection are
queued again. The queue holds at most ``max_queue`` event messages: beyond that the oldest is dropped, counted and
logged (state messages are never dropped: one per camera, always the latest). A broker that cannot be reached or
refuses the credentials is logged as one error line per outage, not raised.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from pipeline.alerts.alert import Alert, canonical_json
from pipeline.alerts.errors import AlertConfigError, SinkClosedError, validate_config
from pipeline.alerts.events import Change, EventTracker
from pipeline.errors import one_line

logger = logging.getLogger(__name__)

_IN_FLIGHT = 20
"""Messages handed to paho and not yet acknowledged, at most: bounds paho's own queue."""
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", ""}


class MqttConfig(BaseModel):
    """Where and how to publish alerts over MQTT."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="mqtt://host[:1883] or mqtts://host[:8883] (TLS); no credentials in it")
    topic_prefix: str = Field("clipwatch", description="<prefix>/events, <prefix>/<camera>/state, <prefix>/available")
    qos: int = Field(1, ge=0, le=2, description="MQTT QoS of every message; 0 loses what a broker crash catches")
    retain: bool = Field(False, description="retain the event messages too (camera states are always retained)")
    username: str | None = None
    password: SecretStr | None = Field(None, description="use ${VAR} to read it from the environment")
    tls: bool | Path = Field(False, description="true: TLS with the system CAs; a path: TLS trusting that CA file")
    client_id: str | None = Field(None, description="default: clipwatch-<random>, so two sinks never collide")
    event_timeout_s: float = Field(60.0, gt=0.0, description="end an event this long after its kind's last clip")
    normal_clips_to_end: int = Field(3, ge=1, description="normal clips in a row that end a camera's events")
    max_queue: int = Field(10_000, ge=1, description="event messages held while the broker is away; then the oldest "
                                                     "are dropped (counted and logged)")
    flush_timeout_s: float = Field(5.0, ge=0.0, description="on shutdown, wait this long for queued messages")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{url}: MQTT URL must be mqtt://host[:port] or mqtts://host[:port]")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put MQTT credentials in username and password, not in the URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{url}: an MQTT URL has no path or query; topics come from topic_prefix")
        _ = parts.port  # a port out of range raises ValueError here
        return url

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if not prefix or any(c in prefix for c in "+#\0") or "" in prefix.split("/"):
            raise ValueError(f"{prefix!r}: topic prefix must be non-empty levels without '+', '#' or empty levels")
        return prefix

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_flag(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        return value

    @field_validator("tls")
    @classmethod
    def _ca_file(cls, value: bool | Path, info: ValidationInfo) -> bool | Path:
        if isinstance(value, bool):
            return value
        base = (info.context or {}).get("base")  # the config file's folder, when loaded from one
        path = value.expanduser()
        path = path if path.is_absolute() or base is None else (Path(base) / path).resolve()
        if not path.is_file():
            raise ValueError(f"{path}: no such CA file")
        return path

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.password is not None and not self.username:
            raise ValueError("password needs a username (MQTT 3.1.1)")
        return self

    @property
    def address(self) -> tuple[str, int, bool]:
        """(host, port, TLS on)."""
        parts = urlsplit(self.url)
        secure = parts.scheme == "mqtts" or self.tls is not False
        return parts.hostname or "", parts.port or (8883 if secure else 1883), secure

    def topic(self, camera: str | None = None, leaf: str = "events") -> str:
        """``<prefix>/<leaf>``, or ``<prefix>/<percent-encoded camera>/<leaf>``."""
        return f"{self.topic_prefix}/{leaf if camera is None else quote(camera, safe='') + '/' + leaf}"


@dataclass(frozen=True)
class MqttStats:
    """Counters for metrics: `published` messages acknowledged by the broker, `dropped` for a full queue."""

    connected: bool
    queued: int
    in_flight: int
    published: int
    dropped: int


@dataclass
class _Message:
    topic: str
    payload: bytes | None  # None: a camera's state, rendered when sent (always the latest)
    retain: bool
    camera: str | None = None


class MqttSink:
    """Publishes alerts (`submit`) and verdicts' effect on events (`observe`) to an MQTT broker, in the background.

        sink = MqttSink({"url": "mqtt://broker:1883", "username": "clipwatch", "password": "..."})
        sink.submit(alert)                    # after the alert log: a new or updated event
        sink.observe("cam1", "normal")        # every verdict: ends events, keeps the camera's state current
        sink.close()                          # ends open events, flushes up to flush_timeout_s
    """

    def __init__(self, config: MqttConfig | Mapping):
        self.config = config = validate_config(MqttConfig, config, "mqtt sink")
        self.host, self.port, secure = config.address
        self.where = f"{'mqtts' if secure else 'mqtt'}://{self.host}:{self.port}"
        self._tracker = EventTracker(config.event_timeout_s, config.normal_clips_to_end)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._queue: deque[_Message] = deque()
        self._state_queued: set[str] = set()
        self._unacked: dict[int, _Message] = {}
        self._acks: deque[int] = deque()
        self._counts = {"published": 0, "dropped": 0}
        self._connected = self._closed = self._stopping = False
        self._lost = False  # the connection dropped since the publisher last looked
        self._failure: str | None = None  # the outage's first error, logged once
        self._client = self._make_client(secure)
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._pump, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def submit(self, alert: Alert) -> None:
        """Queue the event transition of `alert` (and the camera's new state); never waits for the broker."""
        with self._lock:
            if self._closed:
                raise SinkClosedError(f"{alert.idempotency_key}: mqtt sink is closed")
            self._queue_changes(self._tracker.alert(alert, time.time()))
        self._wake.set()

    def observe(self, camera: str, verdict: str) -> None:
        """Account for one verdict of `camera` (``normal``, ``novel``, ...): it may end events or change state."""
        with self._lock:
            if self._closed:
                raise SinkClosedError(f"{camera}: mqtt sink is closed")
            self._queue_changes(self._tracker.verdict(camera, verdict, time.time()))
        self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is acknowledged by the broker; False if `timeout` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: not (self._queue or self._unacked or self._acks), timeout)

    def close(self, timeout: float | None = None) -> bool:
        """End open events (``end_reason: "shutdown"``), flush up to `timeout` (default ``flush_timeout_s``),
        publish ``offline`` and disconnect. Returns whether everything was delivered; what was not is logged."""
        with self._lock:
            if self._closed:
                return not self._queue and not self._unacked
            self._closed = True
            self._queue_changes(self._tracker.end_all(time.time()))
        self._wake.set()
        flushed = self.flush(self.config.flush_timeout_s if timeout is None else timeout)
        if self._connected:
            info = self._client.publish(self.config.topic(leaf="available"), b"offline", self.config.qos, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                info.wait_for_publish(1.0)
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            left = len(self._queue) + len(self._unacked)
        if left:
            logger.warning("mqtt: %d message(s) not delivered to %s before shutdown (%d dropped earlier)", left,
                           self.where, self._counts["dropped"])
        return flushed

    @property
    def stats(self) -> MqttStats:
        with self._lock:
            return MqttStats(self._connected, len(self._queue), len(self._unacked), **self._counts)

    def __enter__(self) -> MqttSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _make_client(self, secure: bool) -> paho.Client:
        config = self.config
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311,
                             client_id=config.client_id or f"clipwatch-{uuid.uuid4().hex[:12]}")
        if config.username:
            client.username_pw_set(config.username, config.password.get_secret_value() if config.password else None)
        if secure:
            try:
                client.tls_set(ca_certs=str(config.tls) if isinstance(config.tls, Path) else None,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError) as error:
                raise AlertConfigError(f"mqtt sink: tls: {config.tls}: {one_line(error)}") from None
        client.will_set(config.topic(leaf="available"), b"offline", config.qos, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(_IN_FLIGHT)
        client.on_connect, client.on_connect_fail = self._on_connect, self._on_connect_fail
        client.on_disconnect, client.on_publish = self._on_disconnect, self._on_publish
        return client

    def _queue_changes(self, changes: list[Change]) -> None:
        """Queue the messages of tracker changes (lock held): events in order, one pending state per camera."""
        for change in changes:
            if change.what == "event":
                self._queue.append(_Message(self.config.topic(), canonical_json(change.payload), self.config.retain))
            elif change.camera not in self._state_queued:
                self._state_queued.add(change.camera)
                self._queue.append(_Message(self.config.topic(change.camera, "state"), None, True, change.camera))
        while len(self._queue) - len(self._state_queued) > self.config.max_queue:
            oldest = self._queue.popleft()
            if oldest.payload is None:  # a state: never dropped, moves to the back
                self._queue.append(oldest)
                continue
            self._counts["dropped"] += 1
            if self._counts["dropped"] == 1 or self._counts["dropped"] % 1000 == 0:
                logger.error("mqtt: %s: queue full (%d messages wait for the broker): dropping the oldest (%d dropped "
                             "so far)", self.where, self.config.max_queue, self._counts["dropped"])

    def _pump(self) -> None:
        """The publisher thread: event timeouts, acknowledgements, and handing queued messages to paho."""
        while not self._stopping:
            with self._lock:
                deadline = self._tracker.next_deadline()
            self._wake.wait(None if deadline is None else max(0.0, min(1.0, deadline - time.time())))
            self._wake.clear()
            with self._lock:
                self._settle()
                if not self._closed:
                    self._queue_changes(self._tracker.expire(time.time()))
                batch = []
                while self._connected and self._queue and len(self._unacked) + len(batch) < _IN_FLIGHT:
                    message = self._queue.popleft()
                    if message.payload is None:
                        self._state_queued.discard(message.camera)
                        message.payload = canonical_json(self._tracker.state(message.camera))
                    batch.append(message)
            for index, message in enumerate(batch):
                info = self._client.publish(message.topic, message.payload, self.config.qos, message.retain)
                with self._lock:
                    if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
                                                                     and self.config.qos > 0):
                        self._unacked[info.mid] = message  # paho resends QoS 1/2 after a reconnection
                        continue
                    self._requeue(batch[index:])  # not taken: retried, in order
                    logger.debug("mqtt: publish to %s not taken (%s), retried later", self.where, info.rc)
                    break

    def _settle(self) -> None:
        """Count acknowledged messages; after a lost connection, queue unacknowledged QoS 0 ones again (lock held)."""
        while self._acks:
            if self._unacked.pop(self._acks.popleft(), None) is not None:
                self._counts["published"] += 1
        if self._lost:
            self._lost = False
            if self.config.qos == 0:
                self._requeue(list(self._unacked.values()))
                self._unacked.clear()
        if not (self._queue or self._unacked):
            self._idle.notify_all()

    def _requeue(self, messages: list[_Message]) -> None:
        """Put messages back at the head, in order; a state is rendered afresh when sent (lock held)."""
        for message in reversed(messages):
            if message.camera is not None:
                if message.camera in self._state_queued:
                    continue  # a newer state of this camera is queued already
                message.payload = None
                self._state_queued.add(message.camera)
            self._queue.appendleft(message)

    # paho callbacks, on its network thread: they set flags and wake the publisher, which does the work.

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._report(f"the broker refused the connection: {reason}")
            return
        if self._failure is not None:
            logger.warning("mqtt: connected to %s again", self.where)
        else:
            logger.info("mqtt: connected to %s", self.where)
        self._failure = None
        client.publish(self.config.topic(leaf="available"), b"online", self.config.qos, retain=True)
        with self._lock:  # safe: nothing holds this lock while calling paho
            self._queue_changes([Change("state", camera) for camera in self._tracker.cameras])  # a restarted
            self._connected = True                                                  # broker may have lost them
        self._wake.set()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        error = sys.exc_info()[1]  # paho calls this while handling the connection's OSError
        self._report(f"cannot connect: {one_line(error) or type(error).__name__}" if error else "cannot connect")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected, self._lost = False, True
        self._wake.set()
        if not self._stopping:
            self._report(f"connection lost ({reason})")

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._acks.append(mid)
        self._wake.set()

    def _report(self, problem: str) -> None:
        """Log the first problem of an outage as one error line; repeats while it lasts stay at debug level."""
        if self._failure is None:
            logger.error("mqtt: %s: %s; retrying in the background, alerts are queued (up to %d)", self.where, problem,
                         self.config.max_queue)
        else:
            logger.debug("mqtt: %s: %s", self.where, problem)
        self._failure = problem
