"""Redis Streams bus: one stream per topic, consumer groups, XAUTOCLAIM redelivery, dead letters, back-pressure.

Mapping of the contract in `pipeline.bus.base` onto Redis (>= 6.2):

- topic → stream ``<namespace>:<topic>``; entry fields ``p`` (payload) and ``k`` (key);
- group → ``XGROUP CREATE … 0 MKSTREAM`` (idempotent; re-created if the server came back empty);
- consume → ``XAUTOCLAIM`` of entries idle longer than the visibility timeout (consumers that died), then
  ``XREADGROUP >``; delivery counts come from the pending-entries list; past `max_deliveries` an entry is copied to
  ``<stream>:dead`` with the reason and acknowledged, in one MULTI;
- ack → ``XACK``, only when the caller says so (after it published its result);
- publish → one Lua script, atomic, one round trip: measure the slowest group's real backlog (``pending`` plus the
  entries after its ``last-delivered-id``) and, only if it is below `max_backlog`, ``XADD … MINID ~ <oldest entry
  some group still needs>``. Otherwise `publish` backs off and retries until its timeout. Being atomic, the bound
  holds exactly with any number of publishers. XINFO's ``lag`` is not trusted: after an AOF rewrite and restart
  Redis 7.0 reports a lag of hundreds for a stream read to its end, which would block publishers forever. The
  undelivered entries are counted instead in a payload-free *index* stream ``<stream>:ids`` that the script keeps
  beside each stream (same ids, trimmed alike), so counting never copies clip payloads.
  Trimming by MINID rather than MAXLEN is what makes "never drop unread entries" hold by construction: MAXLEN counts
  entries whatever their state and would cut an old entry still pending on a slow or dead consumer; back-pressure
  is what keeps the stream short;
- data loss → an *epoch* key ``<namespace>:epoch`` (a random token, set once) is checked after every reconnect and
  at most every `epoch_check_s`: a server that restarted without its data has lost it (or another worker has
  already re-created it with another token). The bus then logs an error, counts the reset and reports itself
  degraded (`health`) for `reset_alarm_s`: the entries queued before the restart are gone and nothing can bring
  them back. Run Redis with ``appendonly yes`` (``appendfsync everysec``) so that a restart keeps them;
- connection errors (server restarting, loading its append-only file) are retried with exponential back-off for up
  to `reconnect_timeout` seconds, then `BusUnavailable`; `close()` ends the wait at once (`BusClosed`), so a
  worker told to stop never waits out an outage. A refused password or ACL is not retried (`BusRefused`). A retried
  XADD may have landed before the connection dropped: that is a duplicate, which at-least-once consumers tolerate.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.bus.base import (
    Backoff,
    BackpressureTimeout,
    BusClosed,
    BusRefused,
    BusUnavailable,
    DeadLetter,
    Delivery,
    check_options,
    check_payload,
    dead_topic,
    overdue_reason,
)
from pipeline.bus.redis_scripts import APPEND_IF_ROOM, EPOCH

logger = logging.getLogger(__name__)

PAYLOAD, KEY = b"p", b"k"
INDEX_SUFFIX = ":ids"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisBus:
    """Redis Streams transport; see the module docstring for how each call maps onto Redis.

    Parameters
    ----------
    url:
        ``redis://host:port/db`` (or rediss://, unix://).
    namespace:
        Prefix of every stream key, so several pipelines can share a server.
    max_backlog, visibility_timeout_ms, max_deliveries, publish_timeout, dead_letter_max_len:
        As for `InProcessBus`; dead-letter streams are trimmed approximately to `dead_letter_max_len`.
    reconnect_timeout:
        Seconds of failed reconnects before a call raises `BusUnavailable`; None retries forever.
    socket_timeout:
        Seconds before a silent server counts as a connection error (blocking reads are capped below it).
    epoch_check_s:
        Most seconds between two checks of the epoch key (it is also checked after every reconnect).
    reset_alarm_s:
        Seconds `health` reports a detected data loss; None: until the process ends.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, namespace: str = "clipwatch",
                 max_backlog: int = 64, visibility_timeout_ms: int = 30_000, max_deliveries: int = 5,
                 publish_timeout: float | None = None, dead_letter_max_len: int = 10_000,
                 reconnect_timeout: float | None = 120.0, socket_timeout: float = 10.0,
                 epoch_check_s: float = 1.0, reset_alarm_s: float | None = 3600.0) -> None:
        check_options(max_backlog=max_backlog, visibility_timeout_ms=visibility_timeout_ms,
                      max_deliveries=max_deliveries, publish_timeout=publish_timeout,
                      dead_letter_max_len=dead_letter_max_len)
        if socket_timeout <= 1:
            raise ValueError(f"socket_timeout must be > 1 s, got {socket_timeout}")
        if epoch_check_s <= 0:
            raise ValueError(f"epoch_check_s must be > 0, got {epoch_check_s}")
        self.max_backlog = max_backlog
        self.visibility_timeout_ms = visibility_timeout_ms
        self.max_deliveries = max_deliveries
        self.publish_timeout = publish_timeout
        self.dead_letter_max_len = dead_letter_max_len
        self.reconnect_timeout = reconnect_timeout
        self.namespace = namespace
        self._max_block_ms = int((socket_timeout - 1) * 1000)
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                            socket_connect_timeout=min(socket_timeout, 5.0),
                                            retry=Retry(NoBackoff(), 0), redis_connect_func=self._connected)
        kwargs = self._client.connection_pool.connection_kwargs
        self._where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self._append_script = self._client.register_script(APPEND_IF_ROOM)
        self._epoch_script = self._client.register_script(EPOCH)
        self._epoch_key = f"{namespace}:epoch" if namespace else "clipwatch:epoch"
        self.epoch_check_s = epoch_check_s
        self.reset_alarm_s = reset_alarm_s
        self._groups_made: set[tuple[str, str]] = set()
        self._claim_cursors: dict[tuple[str, str], str] = {}
        self._closed = False
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._epoch: str | None = None
        self._next_epoch_check = 0.0  # 0: check at the next call (set by every new connection)
        self._down_since: float | None = None
        self._down_reason = ""
        self._reset_at: float | None = None
        self._reset_reason = ""
        self.resets = 0

    # -- the Bus contract -------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, key: str | None = None, timeout: float | None = None) -> str:
        payload = check_payload(topic, payload)
        stream = self._stream(topic)
        timeout = self.publish_timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        fields = [PAYLOAD, payload] + ([KEY, key.encode()] if key is not None else [])
        backoff = Backoff(initial=0.002, maximum=0.1, factor=1.5)
        while True:
            entry_id, backlog, group, _, pending = self._append_if_room(stream, self.max_backlog, fields)
            if entry_id is not None:
                return _text(entry_id)
            if deadline is not None and time.monotonic() >= deadline:
                who = f"group {_text(group)!r}, {pending} pending" if group else "no consumer group yet"
                raise BackpressureTimeout(f"publish to {topic!r} timed out after {timeout:.3g}s: backlog {backlog} "
                                          f"({who}) is at max_backlog {self.max_backlog}",
                                          group=_text(group) if group else None, backlog=backlog, pending=pending)
            backoff.sleep(deadline, self._wake)
            if self._closed:
                raise BusClosed(f"redis bus to {self._where} is closed")

    def consume(self, topic: str, group: str, consumer: str, *, count: int = 16,
                block_ms: int = 1000) -> list[Delivery]:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        stream = self._stream(topic)
        self.ensure_group(topic, group)
        deliveries = self._claim_overdue(topic, stream, group, consumer, count)
        if len(deliveries) < count:
            block = None if deliveries or block_ms <= 0 else min(block_ms, self._max_block_ms)
            reply = self._in_group("consume", stream, group, self._client.xreadgroup, group, consumer,
                                   {stream: ">"}, count=count - len(deliveries), block=block)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    delivery = self._delivery(topic, stream, group, entry_id, fields, 1)
                    if delivery is not None:
                        deliveries.append(delivery)
        return deliveries

    def ack(self, topic: str, group: str, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        try:
            return int(self._call("ack", self._client.xack, self._stream(topic), group, *ids))
        except redis.ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
            logger.warning("redis %s: ack on %s/%s: group is gone (server restarted empty?)", self._where, topic,
                           group)
            return 0

    def extend(self, topic: str, group: str, consumer: str, ids: Iterable[str]) -> int:
        """XCLAIM … 0 … JUSTID: resets the entries' idle time without counting a delivery."""
        ids = list(ids)
        if not ids:
            return 0
        try:
            return len(self._call("extend", self._client.xclaim, self._stream(topic), group, consumer, 0, ids,
                                  justid=True))
        except redis.ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
            return 0

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._bury(delivery.topic, delivery.group, delivery.id, delivery.payload, delivery.key, reason,
                   delivery.delivery_count)

    def dead_letters(self, topic: str, *, count: int = 100) -> list[DeadLetter]:
        entries = self._call("read dead letters", self._client.xrange, dead_topic(self._stream(topic)), count=count)
        letters = []
        for entry_id, fields in entries:
            text = {name.decode(): value for name, value in fields.items()}
            letters.append(DeadLetter(
                id=_text(entry_id), topic=_text(text["topic"]), group=_text(text["group"]),
                entry_id=_text(text["entry"]), payload=text.get("p", b""), key=_text(text.get("k")),
                reason=_text(text["reason"]), delivery_count=int(text["deliveries"]), time=float(text["time"])))
        return letters

    def ensure_group(self, topic: str, group: str) -> None:
        stream = self._stream(topic)
        if (stream, group) not in self._groups_made:
            self._create_group(stream, group)

    def lag(self, topic: str, group: str) -> int:
        return self._append_if_room(self._stream(topic), 0, [], probe=group)[3]

    def retained(self, topic: str) -> int:
        """XLEN; approximate trimming frees whole stream nodes, so a few acknowledged entries may linger."""
        return int(self._call("read length", self._client.xlen, self._stream(topic)))

    def ping(self) -> None:
        """Reach the server once (retrying like any call) and read the epoch: `BusRefused` for a wrong password."""
        self._call("ping", self._client.ping)
        self._check_epoch()

    def health(self) -> str | None:
        """None while the server answers and has kept its data; else one line (reconnecting, data lost)."""
        with self._lock:
            now = time.monotonic()
            if self._down_since is not None:
                return f"redis at {self._where} unreachable for {now - self._down_since:.0f} s: {self._down_reason}"
            if self._reset_at is not None and (self.reset_alarm_s is None
                                               or now - self._reset_at < self.reset_alarm_s):
                return self._reset_reason
        return None

    def close(self) -> None:
        """Close the connection pool; later calls raise `BusClosed`, and so do calls waiting to reconnect.

        A read blocked on the server right now ends on its own (within `socket_timeout`).
        """
        self._closed = True
        self._wake.set()
        self._client.close()

    def __enter__(self) -> RedisBus:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------

    def _stream(self, topic: str) -> str:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}")
        return f"{self.namespace}:{topic}" if self.namespace else topic

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)`, retried with exponential back-off while the server is unreachable."""
        backoff: Backoff | None = None
        deadline: float | None = None
        while True:
            if self._closed:
                raise BusClosed(f"redis bus to {self._where} is closed")
            try:
                result = fn(*args, **kwargs)
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                    redis.exceptions.NoPermissionError) as error:
                raise BusRefused(f"redis at {self._where} refused {what}: {error} (check the password / ACL user "
                                 "in bus.url)") from error
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if self._closed:
                    raise BusClosed(f"redis bus to {self._where} is closed") from error
                if backoff is None:
                    backoff = Backoff(initial=0.02, maximum=1.0)
                    deadline = None if self.reconnect_timeout is None else time.monotonic() + self.reconnect_timeout
                    logger.warning("redis %s: %s failed (%s); reconnecting", self._where, what, error)
                    with self._lock:
                        if self._down_since is None:
                            self._down_since = time.monotonic()
                        self._down_reason = str(error) or type(error).__name__
                if deadline is not None and time.monotonic() >= deadline:
                    raise BusUnavailable(f"redis at {self._where} unreachable for {self.reconnect_timeout:.3g}s "
                                         f"during {what}: {error}") from error
                backoff.sleep(deadline, self._wake)
                continue
            except redis.RedisError:  # an error reply: the server is reachable again all the same
                if backoff is not None:
                    self._reconnected(what, backoff)
                raise
            if backoff is not None:
                self._reconnected(what, backoff)
            elif time.monotonic() >= self._next_epoch_check:
                self._check_epoch()
            return result

    def _reconnected(self, what: str, backoff: Backoff) -> None:
        logger.warning("redis %s: %s answered after %d retries", self._where, what, backoff.attempt)
        with self._lock:
            self._down_since = None
        self._check_epoch()

    def _connected(self, connection: redis.connection.AbstractConnection) -> None:
        """redis-py's connect hook: a new connection (redis-py reconnects silently too) checks the epoch next."""
        connection.on_connect()
        self._next_epoch_check = 0.0

    def _check_epoch(self) -> None:
        """Compare the server's epoch token with the one this bus saw; a change means the server lost its data."""
        self._next_epoch_check = time.monotonic() + self.epoch_check_s
        try:
            token, created = self._epoch_script(keys=[self._epoch_key], args=[secrets.token_hex(8)])
        except redis.RedisError:
            return  # the next call reconnects and checks again
        token = _text(token)
        previous, self._epoch = self._epoch, token
        if previous is None or previous == token:
            return
        how = "came back without its data" if created else "lost its data (another worker noticed first)"
        reason = (f"redis at {self._where} {how}: entries queued before {time.strftime('%H:%M:%S')} are lost; "
                  "run Redis with appendonly yes (appendfsync everysec) to keep them across restarts")
        with self._lock:
            self.resets += 1
            self._reset_at = time.monotonic()
            self._reset_reason = reason
        self._groups_made.clear()
        self._claim_cursors.clear()
        logger.error("%s", reason)

    def _in_group(self, what: str, stream: str, group: str, fn: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Any:
        """`_call` that re-creates the group and retries when the server lost it (restarted without data)."""
        try:
            return self._call(what, fn, *args, **kwargs)
        except redis.ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
            logger.error("redis %s: group %s of %s is missing (server lost its data?); re-creating it", self._where,
                         group, stream)
            self._check_epoch()
            self._create_group(stream, group)
            return self._call(what, fn, *args, **kwargs)

    def _create_group(self, stream: str, group: str) -> None:
        try:
            self._call("create group", self._client.xgroup_create, stream, group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if not str(error).startswith("BUSYGROUP"):
                raise
        self._groups_made.add((stream, group))

    def _append_if_room(self, stream: str, limit: int, fields: list[bytes],
                        probe: str = "") -> tuple[bytes | None, int, bytes | None, int, int]:
        """Run `APPEND_IF_ROOM`: (new entry id or None, worst backlog, its group, backlog of group `probe`,
        pending entries of the worst group)."""
        what = "publish" if limit else "read backlog"
        added, worst, group, probed, pending = self._call(
            what, self._append_script, keys=[stream, stream + INDEX_SUFFIX],
            args=[limit, probe, self.max_backlog + 1, *fields])
        return added, int(worst), group, int(probed), int(pending)

    def _claim_overdue(self, topic: str, stream: str, group: str, consumer: str, count: int) -> list[Delivery]:
        """XAUTOCLAIM entries idle past the visibility timeout; dead-letter those delivered too often."""
        cursor = self._claim_cursors.get((stream, group), "0-0")
        reply = self._in_group("claim", stream, group, self._client.xautoclaim, stream, group, consumer,
                               self.visibility_timeout_ms, start_id=cursor, count=count)
        self._claim_cursors[(stream, group)] = _text(reply[0])
        if len(reply) > 2 and reply[2]:
            logger.warning("redis %s: %d pending entries of %s vanished before redelivery", self._where,
                           len(reply[2]), stream)
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields is not None]
        if not entries:
            return []
        counts = self._call("read delivery counts", self._delivery_counts, stream, group,
                            [entry_id for entry_id, _ in entries])
        deliveries = []
        for entry_id, fields in entries:
            times = counts.get(_text(entry_id), 1)
            if times > self.max_deliveries:
                self._bury(topic, group, _text(entry_id), fields.get(PAYLOAD, b""), _text(fields.get(KEY)),
                           overdue_reason(times - 1, self.max_deliveries), times - 1)
                continue
            delivery = self._delivery(topic, stream, group, entry_id, fields, times)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    def _delivery_counts(self, stream: str, group: str, ids: list[bytes]) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
        return {_text(row["message_id"]): int(row["times_delivered"]) for rows in pipe.execute() for row in rows}

    def _delivery(self, topic: str, stream: str, group: str, entry_id: bytes, fields: dict[bytes, bytes],
                  times: int) -> Delivery | None:
        entry_id = _text(entry_id)
        payload = fields.get(PAYLOAD)
        if payload is None:
            self._bury(topic, group, entry_id, b"", _text(fields.get(KEY)), "entry has no payload field 'p'", times)
            return None
        return Delivery(entry_id, payload, topic, group, times, _text(fields.get(KEY)))

    def _bury(self, topic: str, group: str, entry_id: str, payload: bytes, key: str | None, reason: str,
              deliveries: int) -> None:
        """Copy an entry to the dead-letter stream and acknowledge it, atomically (MULTI/EXEC)."""
        stream = self._stream(topic)
        fields = {b"p": payload, b"reason": " ".join(reason.split()), b"topic": topic, b"group": group,
                  b"entry": entry_id, b"deliveries": str(deliveries), b"time": repr(time.time())}
        if key is not None:
            fields[KEY] = key

        def write() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.xadd(dead_topic(stream), fields, maxlen=self.dead_letter_max_len, approximate=True)
            pipe.xack(stream, group, entry_id)
            added, acked = pipe.execute(raise_on_error=False)
            for reply in (added, acked):  # a group lost in a server restart has nothing left to acknowledge
                if isinstance(reply, Exception) and not str(reply).startswith("NOGROUP"):
                    raise reply

        self._call("dead-letter", write)
        logger.warning("dead-lettered %s entry %s (%s) of group %s: %s", topic, entry_id, key, group, reason)
