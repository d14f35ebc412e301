"""The loop of every consuming stage: receive → step → publish → ack, around a step that knows nothing of the bus.

A `Stage` turns a batch of decoded input messages into `Outcome`s: an output message to publish, nothing (the
input is done, e.g. the sink recorded it), or an error (the input is unusable and is dead-lettered with that
reason). `StageLoop` does everything else, in the order that makes delivery at-least-once without duplicates
downstream:

1. gather a batch (`gather_batch`: up to `max_batch` deliveries, waiting at most `max_wait_s` once one arrived);
2. decode each payload; a malformed one is dead-lettered with the decoder's one-line reason, never a crash;
3. drop redeliveries of clip keys this worker already finished (`KeyCache`, a bounded LRU) and acknowledge them;
4. step; publish each output; only then acknowledge the inputs, and remember their keys.

A step that raises on a batch is retried input by input, so one poison input cannot hold up the others; an input
whose step still raises stays unacknowledged: the bus redelivers it, and dead-letters it after `max_deliveries`,
so it cannot stop the worker either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter

from pipeline.bus import BackpressureTimeout, Bus, BusClosed, BusError, BusRefused, Delivery
from pipeline.stream.messages import DEFAULT_MAX_BYTES, Message, MessageError, decode, encode
from pipeline.stream.steps import Rejected
from workers.ops import HealthBoard, StageMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Inbound:
    """A delivery and the message decoded from it."""

    delivery: Delivery
    message: Message

    @property
    def key(self) -> str | None:
        """The clip key (None for messages that are not about one clip, such as health events)."""
        return getattr(self.message, "key", None)


@dataclass(frozen=True)
class Outcome:
    """What became of one input: `output` is published before the ack; `error` dead-letters the input instead."""

    item: Inbound
    output: Message | None = None
    error: str | None = None


def outcomes_for(items: Sequence[Inbound], results: Sequence[Message | Rejected | None]) -> list[Outcome]:
    """Pair a step's per-input results (in input order) with their inputs."""
    if len(results) != len(items):
        raise RuntimeError(f"step returned {len(results)} results for {len(items)} inputs")
    return [Outcome(item, error=result.reason) if isinstance(result, Rejected) else Outcome(item, output=result)
            for item, result in zip(items, results, strict=True)]


class Stage:
    """Base of the consuming stages. Subclasses set the class attributes and implement `step`."""

    name: str = ""
    input_topic: str = ""
    input_type: type[Message] = Message
    output_topic: str | None = None
    max_batch: int = 1
    max_wait_s: float = 0.0

    def step(self, items: list[Inbound]) -> list[Outcome]:
        raise NotImplementedError

    def poll(self) -> list[Outcome]:
        """Outcomes that became ready without new input (held items whose wait is over)."""
        return []

    def drain(self) -> list[Outcome]:
        """On shutdown: outcomes of everything still held."""
        return []

    def held(self) -> list[Delivery]:
        """Deliveries the stage holds across rounds (their visibility timeout is extended while held)."""
        return []

    def close(self) -> None:
        """Release resources after the loop's last ack."""


class KeyCache:
    """The most recent `capacity` keys, least recently added evicted first: a bounded 'already done' set."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"KeyCache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


def gather_batch(fetch: Callable[[int, float], list[T]], max_batch: int, max_wait_s: float, *,
                 idle_wait_s: float = 0.5, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> list[T]:
    """Up to `max_batch` items from `fetch(count, wait_s)`, whatever stream they come from.

    Waits up to `idle_wait_s` for a first item; once one is in hand, keeps fetching until the batch is full or
    `max_wait_s` has passed since it arrived (or `stop` is set), so a lone clip waits at most `max_wait_s`.
    """
    batch = list(fetch(max_batch, idle_wait_s))
    if not batch:
        return batch
    deadline = clock() + max_wait_s
    while len(batch) < max_batch and not (stop is not None and stop.is_set()):
        remaining = deadline - clock()
        if remaining <= 0:
            break
        batch.extend(fetch(max_batch - len(batch), remaining))
    return batch


def publish_until(bus: Bus, topic: str, payload: bytes, *, key: str | None, stop: threading.Event,
                  grace_s: float = 0.0, slice_s: float = 0.5, blocked: Counter | None = None,
                  stalls: Counter | None = None, stall_after_s: float = 10.0) -> bool:
    """Publish, waiting out back-pressure; gives up `grace_s` seconds after `stop` is set. Returns success.

    Time spent blocked on a full downstream is added to the `blocked` counter. A wait longer than `stall_after_s`
    while the full group's consumers hold nothing (nobody is reading it) is a stall: logged once, counted in
    `stalls`.
    """
    stopped_at: float | None = None
    started = waiting_since = time.monotonic()
    stalled = False
    while True:
        try:
            bus.publish(topic, payload, key=key, timeout=slice_s)
            if stalled:
                logger.warning("publish to %r resumed after %.0f s", topic, time.monotonic() - waiting_since)
            return True
        except BackpressureTimeout as full:
            now = time.monotonic()
            if blocked is not None:
                blocked.inc(now - started)
                started = now
            if not stalled and full.pending == 0 and now - waiting_since >= stall_after_s:
                stalled = True
                if stalls is not None:
                    stalls.inc()
                who = f"group {full.group!r}" if full.group else "no consumer group"
                logger.warning("publish to %r waiting %.0f s: %s has a backlog of %d and holds none of it; are its "
                               "workers running?", topic, now - waiting_since, who, full.backlog)
            if stop.is_set():
                stopped_at = stopped_at if stopped_at is not None else time.monotonic()
                if time.monotonic() - stopped_at >= grace_s:
                    return False


class StageLoop:
    """Runs one `Stage` against a bus until `stop` is set, then finishes its in-flight batch and returns."""

    def __init__(self, stage: Stage, bus: Bus, *, consumer: str, stop: threading.Event, metrics: StageMetrics,
                 board: HealthBoard | None = None, dedupe_keys: int = 100_000, max_bytes: int = DEFAULT_MAX_BYTES,
                 idle_wait_s: float = 0.5, lag_interval_s: float = 1.0, stop_grace_s: float = 10.0):
        self.stage = stage
        self.bus = bus
        self.consumer = consumer
        self.stop = stop
        self.metrics = metrics
        self.board = board
        self.done = KeyCache(dedupe_keys)
        self.max_bytes = max_bytes
        self.idle_wait_s = idle_wait_s
        self.lag_interval_s = lag_interval_s
        self.stop_grace_s = stop_grace_s
        self._next_lag = 0.0
        self._next_extend = 0.0
        self.refused: str | None = None

    def run(self) -> None:
        """Loop until stopped; then publish and acknowledge what is held, and close the stage."""
        logger.info("%s: consuming %s as %s", self.stage.name, self.stage.input_topic, self.consumer)
        try:
            while not self.stop.is_set():
                try:
                    self.run_once()
                except BusClosed:
                    break
                except BusRefused as error:
                    self.refused = str(error)
                    logger.error("%s: %s; stopping", self.stage.name, error)
                    if self.board is not None:
                        self.board.failed(self.stage.name, str(error))
                    return
                except BusError as error:
                    logger.error("%s: bus error: %s; retrying", self.stage.name, error)
                    self.stop.wait(1.0)
            self._finish(self.stage.drain())
        except BusClosed:
            logger.warning("%s: bus closed before held items were acknowledged", self.stage.name)
        finally:
            self.stage.close()
            if self.board is not None:
                self.board.finished(self.stage.name)
            logger.info("%s: stopped", self.stage.name)

    def run_once(self) -> int:
        """One receive → step → publish → ack round; returns the number of deliveries received."""
        stage = self.stage
        deliveries = gather_batch(self._fetch, stage.max_batch, stage.max_wait_s, idle_wait_s=self.idle_wait_s,
                                  stop=self.stop)
        if self.board is not None:
            self.board.beat(stage.name)
        items = self._accept(deliveries)
        outcomes = self._step(items) if items else []
        if len(items) > 1 and not outcomes:
            for item in items:  # find the input that breaks the batch; the others go on
                outcomes += self._step([item])
        outcomes += stage.poll()
        self._finish(outcomes)
        self._extend_held()
        self._refresh_lag()
        return len(deliveries)

    def _extend_held(self) -> None:
        """Keep the stage's held inputs from being redelivered: restart their visibility timeout every third of it."""
        now = time.monotonic()
        if now < self._next_extend:
            return
        visibility_s = getattr(self.bus, "visibility_timeout_ms", 30_000) / 1000
        self._next_extend = now + visibility_s / 3
        held = self.stage.held()
        if held:
            self.bus.extend(self.stage.input_topic, self.stage.name, self.consumer, [d.id for d in held])

    def _step(self, items: list[Inbound]) -> list[Outcome]:
        """The stage's outcomes for `items`; [] if the step raised (the inputs stay unacknowledged)."""
        started = time.perf_counter()
        try:
            outcomes = self.stage.step(items)
        except Exception:
            self.metrics.step_errors.inc()
            logger.exception("%s: step failed on %d inputs (%s); left for redelivery", self.stage.name, len(items),
                             ", ".join(str(item.key) for item in items[:4]))
            return []
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(items))
        return outcomes

    def _fetch(self, count: int, wait_s: float) -> list[Delivery]:
        return self.bus.consume(self.stage.input_topic, self.stage.name, self.consumer, count=count,
                                block_ms=max(0, int(wait_s * 1000)))

    def _accept(self, deliveries: list[Delivery]) -> list[Inbound]:
        """Decoded, new inputs; malformed ones are dead-lettered, already finished ones acknowledged."""
        items, repeated, batch_keys = [], [], set()
        for delivery in deliveries:
            self.metrics.messages_in.inc()
            try:
                message = decode(delivery.payload, expect=self.stage.input_type, max_bytes=self.max_bytes,
                                 origin=f"{delivery.topic} {delivery.id}")
            except MessageError as error:
                self._dead_letter(delivery, str(error))
                continue
            item = Inbound(delivery, message)
            if item.key is not None and (item.key in self.done or item.key in batch_keys):
                repeated.append(delivery.id)
                continue
            if item.key is not None:
                batch_keys.add(item.key)
            items.append(item)
        if repeated:
            self.metrics.duplicates.inc(len(repeated))
            self.bus.ack(self.stage.input_topic, self.stage.name, repeated)
        return items

    def _finish(self, outcomes: list[Outcome]) -> None:
        """Publish outputs, dead-letter rejects, then acknowledge the inputs and remember their keys."""
        acked: list[Outcome] = []
        for outcome in outcomes:
            if outcome.error is not None:
                self._dead_letter(outcome.item.delivery, outcome.error)
                continue
            if outcome.output is not None and not self._publish(outcome):
                continue
            acked.append(outcome)
        if acked:
            self.bus.ack(self.stage.input_topic, self.stage.name, [outcome.item.delivery.id for outcome in acked])
        for outcome in acked:
            if outcome.item.key is not None:
                self.done.add(outcome.item.key)

    def _publish(self, outcome: Outcome) -> bool:
        output = outcome.output
        try:
            payload = encode(output, max_bytes=self.max_bytes)
        except MessageError as error:
            self._dead_letter(outcome.item.delivery, f"cannot publish the result: {error}")
            return False
        key = getattr(output, "key", None)
        if not publish_until(self.bus, self.stage.output_topic, payload, key=key, stop=self.stop,
                             grace_s=self.stop_grace_s, blocked=self.metrics.backpressure_seconds,
                             stalls=self.metrics.publish_stalls):
            logger.warning("%s: stopping with %s unpublished (downstream full); it will be redelivered",
                           self.stage.name, key)
            return False
        self.metrics.messages_out.inc()
        return True

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.bus.dead_letter(delivery, reason)
        self.metrics.dead_letters.inc()
        logger.warning("%s: dead-lettered %s entry %s: %s", self.stage.name, delivery.topic, delivery.id, reason)

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag:
            return
        self._next_lag = now + self.lag_interval_s
        self.metrics.queue_lag.set(self.bus.lag(self.stage.input_topic, self.stage.name))
