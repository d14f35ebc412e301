"""Redis Streams specifics on a real redis-server: crashed consumers, trimming, restarts, outages, odd entries."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import uuid

import pytest
from redis_server import RedisServer, free_port

from pipeline.bus import BackpressureTimeout, BusClosed, BusRefused, BusUnavailable, RedisBus

NODE = 4  # small stream nodes, so approximate (~) trimming acts at a scale a test can see


@pytest.fixture(scope="module")
def server():
    with RedisServer(extra_args=("--stream-node-max-entries", str(NODE))) as running:
        yield running


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def drain(bus: RedisBus, topic: str, group: str, consumer: str, want: int, timeout: float = 15.0) -> list[str]:
    """Consume and acknowledge until `want` payloads arrived; returns them decoded, duplicates included."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(set(got)) < want:
        assert time.monotonic() < deadline, f"only {len(set(got))} of {want} arrived"
        batch = bus.consume(topic, group, consumer, count=8, block_ms=200)
        got += [d.payload.decode() for d in batch]
        bus.ack(topic, group, [d.id for d in batch])
    return got


def test_a_crashed_consumer_s_entries_are_claimed_by_another(server, namespace):
    bus = RedisBus(server.url, namespace=namespace, visibility_timeout_ms=300)
    for i in range(3):
        bus.publish("clips", f"c{i}".encode(), key=f"cam:{i}")
    crashed = bus.consume("clips", "classifier", "worker-a", count=2, block_ms=100)
    assert [d.payload for d in crashed] == [b"c0", b"c1"]
    client = server.client()
    pending = client.xpending_range(f"{namespace}:clips", "classifier", "-", "+", 10)
    assert {(p["consumer"], p["times_delivered"]) for p in pending} == {(b"worker-a", 1)}
    assert [d.payload for d in bus.consume("clips", "classifier", "worker-b", count=5, block_ms=50)] == [b"c2"]
    time.sleep(0.35)
    claimed = bus.consume("clips", "classifier", "worker-b", count=5, block_ms=50)
    assert [(d.payload, d.delivery_count) for d in claimed] == [(b"c0", 2), (b"c1", 2), (b"c2", 2)]
    pending = client.xpending_range(f"{namespace}:clips", "classifier", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"worker-b"}
    bus.ack("clips", "classifier", [d.id for d in claimed])
    assert client.xpending(f"{namespace}:clips", "classifier")["pending"] == 0
    bus.close()


def test_trimming_keeps_the_stream_bounded_and_never_cuts_unacked_entries(server, namespace):
    bus = RedisBus(server.url, namespace=namespace, max_backlog=6, visibility_timeout_ms=60_000)
    stream, client = f"{namespace}:clips", server.client()
    bus.ensure_group("clips", "classifier")
    bus.publish("clips", b"held", key="cam:0")
    [held] = bus.consume("clips", "classifier", "slow", count=1, block_ms=100)
    lengths = []
    for i in range(1, 41):
        bus.publish("clips", str(i).encode())
        lengths.append(client.xlen(stream))
        [delivery] = bus.consume("clips", "classifier", "fast", count=1, block_ms=100)
        bus.ack("clips", "classifier", [delivery.id])
    assert lengths[-1] == 41, "nothing may be trimmed while the oldest entry is still pending"
    assert client.xrange(stream, min=held.id, max=held.id)[0][1][b"p"] == b"held"
    bus.ack("clips", "classifier", [held.id])
    for i in range(41, 121):  # a producer running ahead of a consumer thread, throttled by back-pressure
        if i == 41:
            consumer = threading.Thread(target=drain, args=(bus, "clips", "classifier", "fast", 80))
            consumer.start()
        bus.publish("clips", str(i).encode())
        lengths.append(client.xlen(stream))
    consumer.join(20)
    assert not consumer.is_alive()
    assert max(lengths[41:]) <= 6 + 2 * NODE, f"stream grew to {max(lengths[41:])} entries"
    assert bus.lag("clips", "classifier") == 0
    bus.close()


def test_recovers_from_a_killed_and_restarted_server_without_caller_handling(namespace, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.bus.redis_streams")
    with RedisServer(appendonly=True) as server:
        bus = RedisBus(server.url, namespace=namespace, max_backlog=16, visibility_timeout_ms=1000,
                       reconnect_timeout=30)
        bus.ensure_group("clips", "classifier")
        received: list[str] = []
        published: list[int] = []
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for i in range(80):
                    bus.publish("clips", str(i).encode(), key=f"cam:{i}")
                    published.append(i)
                    time.sleep(0.005)
            except BaseException as error:  # surfaced by the assertion below
                errors.append(error)

        def consume() -> None:
            try:
                received.extend(drain(bus, "clips", "classifier", "w", 80, timeout=40))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(published) < 25 and time.monotonic() < deadline:
            time.sleep(0.002)
        killed_pid, published_at_kill = server.pid, len(published)
        server.kill()  # SIGKILL mid-run: both threads are inside redis calls or about to be
        time.sleep(0.6)
        server.start()  # same port; the append-only file brings the stream and its group back
        assert server.pid != killed_pid
        for thread in threads:
            thread.join(45)
        assert not errors, errors
        assert 25 <= published_at_kill < 80 == len(published), "the kill must land mid-run"
        assert {int(x) for x in received} == set(range(80))
        messages = [record.getMessage() for record in caplog.records]
        assert any("reconnecting" in m for m in messages) and any("answered after" in m for m in messages)
        assert bus.lag("clips", "classifier") == 0
        assert server.client().xpending(f"{namespace}:clips", "classifier")["pending"] == 0
        bus.close()


def test_groups_are_recreated_when_the_server_comes_back_empty(namespace):
    with RedisServer(appendonly=False) as server:
        bus = RedisBus(server.url, namespace=namespace, reconnect_timeout=10)
        bus.publish("clips", b"before")
        [before] = bus.consume("clips", "classifier", "w", block_ms=100)
        server.kill()
        server.start()  # no persistence: stream and group are gone
        assert bus.ack("clips", "classifier", [before.id]) == 0  # nothing left to acknowledge; no exception
        assert bus.consume("clips", "classifier", "w", block_ms=50) == []  # NOGROUP → group re-created
        bus.publish("clips", b"after")
        assert [d.payload for d in bus.consume("clips", "classifier", "w", block_ms=100)] == [b"after"]
        bus.close()


def test_a_server_that_stays_down_raises_bus_unavailable(namespace):
    with RedisServer() as server:
        bus = RedisBus(server.url, namespace=namespace, reconnect_timeout=0.5)
        bus.publish("clips", b"x")
        server.kill()
        started = time.monotonic()
        with pytest.raises(BusUnavailable, match=rf"redis at 127.0.0.1:{server.port} unreachable for 0.5s during"):
            bus.consume("clips", "classifier", "w", block_ms=50)
        assert 0.5 <= time.monotonic() - started < 5
        bus.close()


def test_backlog_is_counted_not_read_from_xinfo_lag_after_an_aof_rewrite_and_restart():
    """Redis 7.0 reports a stale `lag` after BGREWRITEAOF + restart; trusting it blocked publishers for good."""
    with RedisServer(appendonly=True) as aof:
        bus = RedisBus(aof.url, namespace="aof", max_backlog=8, reconnect_timeout=20)
        drain_all = lambda n: drain(bus, "clips", "classifier", "w", n)  # noqa: E731
        for i in range(30):
            bus.publish("clips", f"a{i}".encode(), timeout=5)
            drain_all(1)
        client = aof.client()
        client.bgrewriteaof()
        wait = time.monotonic() + 10
        while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < wait:
            time.sleep(0.05)
        for i in range(12):  # written after the rewrite: the reloaded group counts them as unread
            bus.publish("clips", f"b{i}".encode(), timeout=5)
            drain_all(1)
        aof.kill()
        aof.start()
        [info] = aof.client().xinfo_groups("aof:clips")
        assert info["pending"] == 0
        assert info["lag"] >= 8, "this redis no longer reproduces the stale lag; the test would pass vacuously"
        assert bus.lag("clips", "classifier") == 0
        bus.publish("clips", b"after restart", timeout=2)  # the old script waited here forever
        assert drain_all(1) == ["after restart"]
        bus.close()


def test_a_stream_written_before_the_index_is_counted_directly_until_read(server, namespace):
    bus = RedisBus(server.url, namespace=namespace, max_backlog=4)
    stream, client = f"{namespace}:clips", server.client()
    bus.ensure_group("clips", "classifier")
    client.delete(stream + ":ids")
    for i in range(3):  # as an older clipwatch wrote them: no index entries
        client.xadd(stream, {"p": str(i).encode()})
    assert bus.lag("clips", "classifier") == 3
    bus.publish("clips", b"3", timeout=1)
    with pytest.raises(BackpressureTimeout, match="backlog 4"):
        bus.publish("clips", b"4", timeout=0.3)
    assert drain(bus, "clips", "classifier", "w", 4) == ["0", "1", "2", "3"]
    bus.publish("clips", b"4", timeout=1)  # caught up: the index starts with this entry
    assert client.xlen(stream + ":ids") == 1
    assert bus.lag("clips", "classifier") == 1
    bus.close()


def test_a_server_that_restarts_without_its_data_is_reported_not_silent(caplog):
    with RedisServer(appendonly=False) as volatile:
        bus = RedisBus(volatile.url, namespace="loss", reconnect_timeout=20, reset_alarm_s=60)
        other = RedisBus(volatile.url, namespace="loss", reconnect_timeout=20)
        bus.ping()
        other.ping()
        bus.publish("clips", b"queued")
        bus.ensure_group("clips", "classifier")
        assert bus.health() is None
        volatile.kill()
        volatile.start()
        with caplog.at_level(logging.ERROR, logger="pipeline.bus.redis_streams"):
            assert other.consume("clips", "classifier", "w", block_ms=50) == []  # the queued entry is gone
            bus.publish("clips", b"next")
        assert bus.resets == 1 and other.resets == 1
        for reporter in (bus, other):
            assert "without its data" in reporter.health() or "lost its data" in reporter.health()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("entries queued before" in line and "appendonly yes" in line for line in errors)
        bus.reset_alarm_s = 0.0
        assert bus.health() is None  # the alarm lasts reset_alarm_s; the count stays
        assert bus.resets == 1
        bus.close()
        other.close()


def test_a_server_restarted_with_its_data_is_no_reset():
    with RedisServer(appendonly=True) as aof:
        bus = RedisBus(aof.url, namespace="keep", reconnect_timeout=20)
        bus.ping()
        bus.publish("clips", b"queued")
        aof.kill()
        aof.start()
        assert [d.payload for d in bus.consume("clips", "classifier", "w", block_ms=50)] == [b"queued"]
        assert bus.resets == 0 and bus.health() is None
        bus.close()


def test_close_ends_a_reconnect_wait_at_once(server, namespace):
    with RedisServer() as doomed:
        bus = RedisBus(doomed.url, namespace=namespace, reconnect_timeout=300)
        bus.ping()
        doomed.kill()
        failure: list[BaseException] = []

        def blocked() -> None:
            try:
                bus.publish("clips", b"x")
            except BaseException as error:  # noqa: BLE001 - the test inspects it
                failure.append(error)

        thread = threading.Thread(target=blocked)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()
        assert "unreachable" in bus.health()
        started = time.monotonic()
        bus.close()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - started < 2
        assert isinstance(failure[0], BusClosed)


def test_a_wrong_password_is_refused_at_once_not_retried():
    with RedisServer(extra_args=("--requirepass", "right-secret")) as locked:
        good = RedisBus(f"redis://:right-secret@127.0.0.1:{locked.port}/0", namespace="auth")
        good.ping()
        good.publish("clips", b"ok")
        good.close()
        for url in (f"redis://:wrong@127.0.0.1:{locked.port}/0", locked.url):
            bus = RedisBus(url, namespace="auth", reconnect_timeout=300)
            started = time.monotonic()
            with pytest.raises(BusRefused, match="check the password"):
                bus.ping()
            assert time.monotonic() - started < 2
            bus.close()


def test_an_entry_without_payload_is_dead_lettered_not_delivered(server, namespace):
    bus = RedisBus(server.url, namespace=namespace)
    server.client().xadd(f"{namespace}:clips", {"note": "written by something else"})
    bus.publish("clips", b"real")
    assert [d.payload for d in bus.consume("clips", "classifier", "w", count=5, block_ms=100)] == [b"real"]
    [letter] = bus.dead_letters("clips")
    assert letter.reason == "entry has no payload field 'p'" and letter.payload == b""
    assert server.client().xpending(f"{namespace}:clips", "classifier")["pending"] == 1  # only "real"
    bus.close()


def test_rediss_speaks_tls_to_a_server_with_a_private_ca(tmp_path):
    """What configs/redis.yaml documents: rediss:// with ?ssl_ca_certs= for a private CA."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls_port = free_port()
    with RedisServer(extra_args=("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file",
                                 str(key), "--tls-auth-clients", "no")):
        bus = RedisBus(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}", namespace="tls")
        bus.ping()
        bus.publish("clips", b"over tls")
        assert [d.payload for d in bus.consume("clips", "classifier", "w", block_ms=100)] == [b"over tls"]
        bus.close()
