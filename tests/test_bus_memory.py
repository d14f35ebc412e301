"""In-process bus specifics: blocked threads wake on close and on redelivery deadlines; real worker threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.bus import BusClosed, InProcessBus
from pipeline.stream.messages import ClipMessage, decode, encode


def run_in_thread(fn) -> tuple[threading.Thread, list]:
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(fn())
        except BaseException as error:  # handed to the test through `outcome`
            outcome.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def test_close_wakes_a_blocked_publisher_and_a_blocked_consumer():
    bus = InProcessBus(max_backlog=1)
    bus.publish("clips", b"fills the backlog")
    publisher, published = run_in_thread(lambda: bus.publish("clips", b"blocked"))
    consumer, consumed = run_in_thread(lambda: bus.consume("empty", "g", "c", block_ms=60_000))
    time.sleep(0.2)
    assert publisher.is_alive() and consumer.is_alive()
    started = time.monotonic()
    bus.close()
    publisher.join(2)
    consumer.join(2)
    assert time.monotonic() - started < 1.0
    assert isinstance(published[0], BusClosed) and isinstance(consumed[0], BusClosed)


def test_a_blocked_consumer_wakes_when_an_entry_becomes_redeliverable():
    bus = InProcessBus(visibility_timeout_ms=300)
    bus.publish("clips", b"x")
    [first] = bus.consume("clips", "g", "dies", block_ms=100)
    started = time.monotonic()
    [again] = bus.consume("clips", "g", "lives", block_ms=5_000)
    waited = time.monotonic() - started
    assert again.id == first.id and again.delivery_count == 2
    assert 0.25 <= waited < 2.0, waited


def test_a_pipeline_of_worker_threads_passes_every_clip_through():
    bus = InProcessBus(max_backlog=4)
    stop = threading.Event()
    sunk: list[tuple[str, float]] = []

    def worker(source: str, group: str, step, target: str | None) -> None:
        while not stop.is_set():
            for delivery in bus.consume(source, group, f"{group}-0", count=2, block_ms=50):
                result = step(decode(delivery.payload, expect=ClipMessage))
                if target is None:
                    sunk.append((result.key, float(result.array.mean())))
                else:
                    bus.publish(target, encode(result), key=result.key)
                bus.ack(source, group, [delivery.id])

    def brighten(clip: ClipMessage) -> ClipMessage:
        return ClipMessage.from_array(clip.array + 1, stream_id=clip.stream_id, seq=clip.seq,
                                      first_frame=clip.first_frame, last_frame=clip.last_frame, pts=clip.pts)

    for topic, group in (("raw", "stage1"), ("bright", "sink")):
        bus.ensure_group(topic, group)
    threads = [threading.Thread(target=worker, args=("raw", "stage1", brighten, "bright")),
               threading.Thread(target=worker, args=("bright", "sink", lambda clip: clip, None))]
    for thread in threads:
        thread.start()
    for seq in range(30):
        frames = np.full((2, 3, 3, 3), seq, np.uint8)
        clip = ClipMessage.from_array(frames, stream_id="cam", seq=seq, first_frame=2 * seq,
                                      last_frame=2 * seq + 1, pts=[seq * 0.1, seq * 0.1 + 0.05])
        bus.publish("raw", encode(clip), key=clip.key)
    deadline = time.monotonic() + 10
    while len(sunk) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(2)
    assert sunk == [(f"cam:{seq}", seq + 1.0) for seq in range(30)]
    assert bus.lag("raw", "stage1") == bus.lag("bright", "sink") == 0
    assert bus.retained("raw") == bus.retained("bright") == 0


def test_ids_from_another_bus_are_rejected():
    bus = InProcessBus()
    bus.publish("clips", b"x")
    bus.consume("clips", "g", "c", block_ms=10)
    with pytest.raises(ValueError, match="not an entry id of this bus: '1795323127218-0'"):
        bus.ack("clips", "g", ["1795323127218-0"])
