"""A producer process and consumer processes on a real redis-server; one consumer is SIGKILLed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from redis_server import RedisServer

from pipeline.bus import RedisBus

JOBS = 300
BACKLOG = 40

PRODUCER = r"""
import sys
from pipeline.bus import RedisBus
url, namespace, jobs, backlog = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bus = RedisBus(url, namespace=namespace, max_backlog=backlog, reconnect_timeout=30)
bus.ensure_group("jobs", "workers")
for i in range(jobs):
    print(bus.publish("jobs", f"job-{i}".encode(), key=f"job:{i}"), flush=True)
"""

# A worker loop: consume → step → publish the result → ack. With a pause point it stops for good between the
# publish and the ack of its n-th job (the worst moment to die), so the test can SIGKILL it there.
CONSUMER = r"""
import os, sys, time
from pipeline.bus import RedisBus
url, namespace, name, log_path, pause_after = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
bus = RedisBus(url, namespace=namespace, max_backlog=10_000, visibility_timeout_ms=500, reconnect_timeout=30)
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
done = 0
while True:
    for delivery in bus.consume("jobs", "workers", name, count=8, block_ms=200):
        bus.publish("results", delivery.payload.upper(), key=delivery.key)
        done += 1
        if done == pause_after:
            os.write(log, b"PAUSED\n")
            time.sleep(3600)
        acked = bus.ack("jobs", "workers", [delivery.id])
        os.write(log, f"{delivery.id} {acked}\n".encode())
"""


def spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_killed_consumer_process_loses_nothing_and_every_entry_is_acked_once(tmp_path):
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    log_a, log_b = tmp_path / "consumer-a.log", tmp_path / "consumer-b.log"
    with RedisServer() as server:
        observer = RedisBus(server.url, namespace=namespace)
        client = server.client()
        processes = []
        try:
            producer = spawn(PRODUCER, server.url, namespace, JOBS, BACKLOG)
            consumer_a = spawn(CONSUMER, server.url, namespace, "a", log_a, 60)
            processes += [producer, consumer_a]
            wait_for(lambda: log_a.exists() and "PAUSED" in log_a.read_text(), 30, "consumer a to reach job 60")
            os.kill(consumer_a.pid, signal.SIGKILL)
            assert consumer_a.wait(5) == -signal.SIGKILL
            # With its only consumer dead, the producer is held by back-pressure instead of flooding the stream.
            wait_for(lambda: observer.lag("jobs", "workers") == BACKLOG, 10, "the backlog to reach its bound")
            time.sleep(0.3)
            assert producer.poll() is None and observer.lag("jobs", "workers") == BACKLOG
            consumer_b = spawn(CONSUMER, server.url, namespace, "b", log_b, 0)
            processes.append(consumer_b)
            wait_for(lambda: producer.poll() is not None, 30, "the producer to finish")
            wait_for(lambda: observer.lag("jobs", "workers") == 0, 30, "every job to be acknowledged")
            consumer_b.send_signal(signal.SIGTERM)
            consumer_b.wait(5)
        finally:
            outputs = []
            for process in processes:
                if process.poll() is None:
                    process.kill()
                outputs.append(process.communicate())
        out, err = outputs[0]
        assert producer.returncode == 0, err
        job_ids = out.split()
        assert len(job_ids) == len(set(job_ids)) == JOBS

        results = Counter(fields[b"k"].decode() for _id, fields in client.xrange(f"{namespace}:results"))
        assert set(results) == {f"job:{i}" for i in range(JOBS)}, "every job processed at least once"
        assert results["job:59"] == 2, "the job consumer a published but never acked is redone by b"

        acks: dict[str, int] = defaultdict(int)
        for path in (log_a, log_b):
            for line in path.read_text().splitlines():
                if line != "PAUSED":
                    entry_id, acked = line.split()
                    acks[entry_id] += int(acked)
        assert set(acks) == set(job_ids) and set(acks.values()) == {1}, "every job acknowledged exactly once"
        assert client.xpending(f"{namespace}:jobs", "workers")["pending"] == 0
        assert observer.dead_letters("jobs") == []
        observer.close()
