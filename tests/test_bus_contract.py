"""The bus contract, run against both transports: the in-process bus and Redis Streams on a real redis-server."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest
from redis_server import RedisServer

from pipeline.bus import BackpressureTimeout, Bus, BusClosed, InProcessBus, RedisBus, open_bus
from pipeline.stream.messages import ClipMessage, EmbeddingMessage, MessageError, decode, encode


@pytest.fixture(scope="module")
def redis_server():
    # Small stream nodes: approximate trimming frees whole nodes, so retention bounds are visible at test scale.
    with RedisServer(extra_args=("--stream-node-max-entries", "4")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def make_bus(request):
    """Factory of buses of one transport; each Redis bus gets its own namespace on the shared test server."""
    buses = []
    namespace = f"test-{uuid.uuid4().hex[:8]}"

    def make(**options) -> Bus:
        if request.param == "memory":
            bus = InProcessBus(**options)
        else:
            bus = RedisBus(request.getfixturevalue("redis_server").url, namespace=namespace, **options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def test_both_transports_satisfy_the_protocol(make_bus):
    assert isinstance(make_bus(), Bus)


def test_publish_consume_ack(make_bus):
    bus = make_bus()
    ids = [bus.publish("clips", f"payload-{i}".encode(), key=f"cam:{i}") for i in range(3)]
    assert len(set(ids)) == 3
    assert bus.lag("clips", "classifier") == 3  # no group yet: every retained entry is waiting
    deliveries = bus.consume("clips", "classifier", "w1", count=10, block_ms=100)
    assert [d.payload for d in deliveries] == [b"payload-0", b"payload-1", b"payload-2"]
    assert [d.key for d in deliveries] == ["cam:0", "cam:1", "cam:2"]
    assert [d.id for d in deliveries] == ids
    assert {(d.topic, d.group, d.delivery_count) for d in deliveries} == {("clips", "classifier", 1)}
    assert bus.lag("clips", "classifier") == 3  # delivered but not acknowledged still counts
    assert bus.ack("clips", "classifier", [d.id for d in deliveries[:2]]) == 2
    assert bus.ack("clips", "classifier", [deliveries[0].id]) == 0  # already acknowledged
    assert bus.lag("clips", "classifier") == 1
    assert bus.ack("clips", "classifier", [deliveries[2].id]) == 1
    assert bus.lag("clips", "classifier") == 0
    started = time.monotonic()
    assert bus.consume("clips", "classifier", "w1", block_ms=150) == []
    assert time.monotonic() - started >= 0.1


def test_groups_each_get_everything_and_consumers_of_a_group_share(make_bus):
    bus = make_bus()
    bus.ensure_group("embeddings", "density")
    bus.ensure_group("embeddings", "archive")
    for i in range(10):
        bus.publish("embeddings", str(i).encode())
    taken: dict[str, list[bytes]] = {"d1": [], "d2": []}
    for turn in range(5):
        consumer = "d1" if turn % 2 == 0 else "d2"
        batch = bus.consume("embeddings", "density", consumer, count=2, block_ms=50)
        taken[consumer] += [d.payload for d in batch]
        bus.ack("embeddings", "density", [d.id for d in batch])
    assert taken["d1"] and taken["d2"]
    assert not set(taken["d1"]) & set(taken["d2"])
    assert sorted(taken["d1"] + taken["d2"], key=int) == [str(i).encode() for i in range(10)]
    archive = bus.consume("embeddings", "archive", "a1", count=100, block_ms=50)
    assert [d.payload for d in archive] == [str(i).encode() for i in range(10)]


def test_unacknowledged_entry_is_redelivered_after_the_visibility_timeout(make_bus):
    bus = make_bus(visibility_timeout_ms=300)
    bus.publish("clips", b"clip-0", key="cam:0")
    first = bus.consume("clips", "classifier", "crashed", block_ms=100)
    assert [(d.payload, d.delivery_count) for d in first] == [(b"clip-0", 1)]
    assert bus.consume("clips", "classifier", "healthy", block_ms=50) == []  # still within its timeout
    time.sleep(0.35)
    second = bus.consume("clips", "classifier", "healthy", block_ms=100)
    assert [(d.id, d.payload, d.key, d.delivery_count) for d in second] == [(first[0].id, b"clip-0", "cam:0", 2)]
    assert bus.ack("clips", "classifier", [second[0].id]) == 1
    time.sleep(0.35)
    assert bus.consume("clips", "classifier", "healthy", block_ms=50) == []
    assert bus.lag("clips", "classifier") == 0


def test_entry_past_max_deliveries_goes_to_the_dead_letter_topic(make_bus):
    bus = make_bus(visibility_timeout_ms=100, max_deliveries=2)
    bus.publish("clips", b"poison", key="cam:66")
    bus.publish("clips", b"fine", key="cam:67")
    counts = []
    for _ in range(2):
        batch = bus.consume("clips", "classifier", "w", count=1, block_ms=100)
        counts += [(d.payload, d.delivery_count) for d in batch]
        time.sleep(0.15)
    assert counts == [(b"poison", 1), (b"poison", 2)]
    rest = bus.consume("clips", "classifier", "w", count=5, block_ms=100)
    assert [d.payload for d in rest] == [b"fine"]  # the poison entry is gone to the dead letters
    bus.ack("clips", "classifier", [rest[0].id])
    [letter] = bus.dead_letters("clips")
    assert (letter.payload, letter.key, letter.topic, letter.group, letter.delivery_count) == \
        (b"poison", "cam:66", "clips", "classifier", 2)
    assert letter.reason == "not acknowledged after 2 deliveries (max_deliveries=2)"
    assert bus.lag("clips", "classifier") == 0
    assert bus.dead_letters("embeddings") == []


def test_worker_dead_letters_a_malformed_payload_and_goes_on(make_bus):
    bus = make_bus()
    frames = np.full((2, 4, 4, 3), 9, np.uint8)
    good = ClipMessage.from_array(frames, stream_id="cam", seq=1, first_frame=0, last_frame=1, pts=[0.0, 0.1])
    bus.publish("clips", b"\xc1garbage", key="cam:0")
    bus.publish("clips", encode(good), key=good.key)
    outputs = []
    for delivery in bus.consume("clips", "classifier", "w", count=10, block_ms=100):
        try:
            clip = decode(delivery.payload, expect=ClipMessage, origin=f"clips {delivery.id}")
        except MessageError as error:
            bus.dead_letter(delivery, str(error))
            continue
        result = EmbeddingMessage.from_arrays({"fc6": clip.array.mean(axis=(1, 2, 3))}, stream_id=clip.stream_id,
                                              seq=clip.seq, pts=clip.pts, model_id="m", prediction=0,
                                              class_name="x", softmax_max=1.0)
        bus.publish("embeddings", encode(result), key=result.key)
        bus.ack("clips", "classifier", [delivery.id])
        outputs.append(result.key)
    assert outputs == ["cam:1"]
    [letter] = bus.dead_letters("clips")
    assert letter.key == "cam:0" and letter.payload == b"\xc1garbage"
    assert letter.reason.startswith(f"clips {letter.entry_id}: not msgpack")
    assert bus.lag("clips", "classifier") == 0
    [embedding] = bus.consume("embeddings", "density", "d", block_ms=100)
    assert decode(embedding.payload, expect=EmbeddingMessage).feature("fc6").tolist() == [9.0, 9.0]


def test_publish_blocks_at_max_backlog_and_resumes_after_acks(make_bus):
    bus = make_bus(max_backlog=4)
    bus.ensure_group("clips", "classifier")
    published: list[int] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(10):
                bus.publish("clips", str(i).encode())
                published.append(i)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: len(published) == 4, what="4 publishes")
    time.sleep(0.3)
    assert len(published) == 4, "publish must block while the backlog is at max_backlog"
    batch = bus.consume("clips", "classifier", "w", count=2, block_ms=100)
    time.sleep(0.2)
    assert len(published) == 4, "delivered but unacknowledged entries still count"
    bus.ack("clips", "classifier", [d.id for d in batch])
    wait_for(lambda: len(published) == 6, what="publisher to resume")
    received = [d.payload for d in batch]
    while len(received) < 10:
        more = bus.consume("clips", "classifier", "w", count=3, block_ms=200)
        assert bus.lag("clips", "classifier") <= 4
        bus.ack("clips", "classifier", [d.id for d in more])
        received += [d.payload for d in more]
    producer.join(5)
    assert not errors and not producer.is_alive()
    assert received == [str(i).encode() for i in range(10)]


def test_publish_times_out_with_a_clear_error(make_bus):
    bus = make_bus(max_backlog=2, publish_timeout=5.0)
    bus.ensure_group("clips", "classifier")
    bus.publish("clips", b"a")
    bus.publish("clips", b"b")
    started = time.monotonic()
    with pytest.raises(BackpressureTimeout, match=r"publish to 'clips' timed out after 0.2s: backlog 2 "
                                                  r"\(group 'classifier', 0 pending\) is at max_backlog 2") as caught:
        bus.publish("clips", b"c", timeout=0.2)
    assert (caught.value.group, caught.value.backlog, caught.value.pending) == ("classifier", 2, 0)
    assert 0.2 <= time.monotonic() - started < 3.0
    assert [d.payload for d in bus.consume("clips", "classifier", "w", count=10, block_ms=100)] == [b"a", b"b"]


def test_without_consumers_publish_blocks_instead_of_dropping(make_bus):
    bus = make_bus(max_backlog=3)
    for i in range(3):
        bus.publish("clips", str(i).encode())
    with pytest.raises(BackpressureTimeout, match=r"backlog 3 \(no consumer group yet\)"):
        bus.publish("clips", b"3", timeout=0.1)
    late = bus.consume("clips", "late-group", "w", count=10, block_ms=100)
    assert [d.payload for d in late] == [b"0", b"1", b"2"]


def test_concurrent_producers_and_consumers_lose_nothing(make_bus):
    bus = make_bus(max_backlog=8)
    bus.ensure_group("clips", "classifier")
    received: list[str] = []
    per_consumer: dict[str, list[str]] = {"c0": [], "c1": []}
    lock = threading.Lock()
    done = threading.Event()
    expected = {f"p{p}:{i}" for p in range(3) for i in range(40)}

    def produce(p: int) -> None:
        for i in range(40):
            bus.publish("clips", f"p{p}:{i}".encode(), key=f"p{p}:{i}")

    def consume(name: str) -> None:
        while not done.is_set():
            batch = bus.consume("clips", "classifier", name, count=5, block_ms=50)
            with lock:
                received.extend(d.payload.decode() for d in batch)
            per_consumer[name].extend(d.payload.decode() for d in batch)
            bus.ack("clips", "classifier", [d.id for d in batch])

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    threads += [threading.Thread(target=consume, args=(f"c{c}",)) for c in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(received) >= len(expected), what="all messages")
    done.set()
    for thread in threads:
        thread.join(5)
    assert Counter(received) == Counter(expected)  # each exactly once: nothing lost, nothing duplicated
    for p, name in ((p, name) for p in range(3) for name in per_consumer):  # each consumer sees publish order
        mine = [int(r.split(":")[1]) for r in per_consumer[name] if r.startswith(f"p{p}:")]
        assert mine == sorted(mine)
    assert bus.lag("clips", "classifier") == 0


def test_closed_bus_refuses_calls(make_bus):
    bus = make_bus()
    bus.close()
    with pytest.raises(BusClosed):
        bus.publish("clips", b"x")
    with pytest.raises(BusClosed):
        bus.consume("clips", "g", "c", block_ms=10)


def test_bad_arguments_are_rejected(make_bus):
    bus = make_bus()
    with pytest.raises(TypeError, match="payload must be bytes"):
        bus.publish("clips", "text")
    with pytest.raises(ValueError, match="topic must be a non-empty string"):
        bus.publish("", b"x")
    with pytest.raises(ValueError, match="count must be >= 1"):
        bus.consume("clips", "g", "c", count=0)
    with pytest.raises(ValueError, match="max_backlog must be >= 1"):
        make_bus(max_backlog=0)


def test_open_bus_picks_the_transport(redis_server):
    with open_bus() as memory:
        assert isinstance(memory, InProcessBus)
    with open_bus(redis_server.url, max_backlog=3) as remote:
        assert isinstance(remote, RedisBus) and remote.max_backlog == 3
    with pytest.raises(ValueError, match="unknown bus URL 'kafka://x'"):
        open_bus("kafka://x")


def test_an_entry_stuck_pending_survives_heavy_traffic_and_trimming(make_bus):
    bus = make_bus(max_backlog=4, visibility_timeout_ms=1500)
    bus.publish("clips", b"stuck", key="cam:0")
    [stuck] = bus.consume("clips", "classifier", "hung-worker", count=1, block_ms=100)
    delivered_at = time.monotonic()
    for i in range(1, 60):  # far more than max_backlog entries flow past the stuck one
        bus.publish("clips", f"clip-{i}".encode())
        batch = bus.consume("clips", "classifier", "fast-worker", count=1, block_ms=100)
        assert [d.payload for d in batch] == [f"clip-{i}".encode()]
        bus.ack("clips", "classifier", [batch[0].id])
    assert bus.lag("clips", "classifier") == 1
    time.sleep(max(0.0, 1.55 - (time.monotonic() - delivered_at)))
    [again] = bus.consume("clips", "classifier", "fast-worker", count=5, block_ms=500)
    assert (again.id, again.payload, again.key, again.delivery_count) == (stuck.id, b"stuck", "cam:0", 2)
    assert bus.ack("clips", "classifier", [again.id]) == 1
    assert bus.lag("clips", "classifier") == 0


def test_the_slowest_group_sets_the_pace_and_acknowledged_entries_are_released(make_bus):
    bus = make_bus(max_backlog=5)
    bus.ensure_group("verdicts", "alerts")
    bus.ensure_group("verdicts", "archive")
    for i in range(5):
        bus.publish("verdicts", str(i).encode())
    fast = bus.consume("verdicts", "alerts", "a", count=10, block_ms=100)
    bus.ack("verdicts", "alerts", [d.id for d in fast])
    assert (bus.lag("verdicts", "alerts"), bus.lag("verdicts", "archive")) == (0, 5)
    with pytest.raises(BackpressureTimeout, match=r"backlog 5 \(group 'archive', 0 pending\)"):
        bus.publish("verdicts", b"5", timeout=0.1)
    for i in range(5, 205):  # both groups keep up: retention stays bounded however much flows through
        for group in ("alerts", "archive"):
            batch = bus.consume("verdicts", group, "w", count=10, block_ms=100)
            bus.ack("verdicts", group, [d.id for d in batch])
        bus.publish("verdicts", str(i).encode())
        assert bus.retained("verdicts") <= 20
    assert bus.retained("nothing-here") == 0


def test_extend_keeps_a_held_entry_from_being_redelivered(make_bus):
    bus = make_bus(visibility_timeout_ms=300)
    bus.publish("verdicts", b"held", key="cam:1")
    [held] = bus.consume("verdicts", "sink", "sink-1", count=1, block_ms=100)
    for _ in range(4):  # held for 4 x 0.15 s = 2 visibility timeouts, extended every half of one
        time.sleep(0.15)
        assert bus.extend("verdicts", "sink", "sink-1", [held.id]) == 1
        assert bus.consume("verdicts", "sink", "sink-2", count=1, block_ms=0) == []
    time.sleep(0.4)  # no longer extended: handed to another consumer, with no delivery counted for the extensions
    [again] = bus.consume("verdicts", "sink", "sink-2", count=1, block_ms=500)
    assert (again.id, again.delivery_count) == (held.id, 2)
    assert bus.ack("verdicts", "sink", [again.id]) == 1
    assert bus.extend("verdicts", "sink", "sink-2", [again.id]) == 0
