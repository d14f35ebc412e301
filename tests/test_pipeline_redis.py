"""The four workers as real processes over a real redis-server, with a real signed-webhook receiver.

One run, several failures: a malformed entry in the clip stream, the webhook failing (HTTP 500, then a request held
past the client's timeout), the density and the classifier worker SIGKILLed mid-run while each holds an
unacknowledged batch, the Redis server itself killed and restarted while the decoder and the sink are connected,
then the two workers restarted. At the end every clip has exactly one verdict, every flagged clip exactly one
alert, delivered once per key, in order per stream, and the surviving workers exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from pipeline_helpers import WorkerProcess, read_jsonl, wait_for, write_config
from redis_server import RedisServer
from webhook_server import Reply, WebhookServer

from pipeline.alerts import verify_signature
from pipeline.bus import RedisBus
from pipeline.data import synthesize
from pipeline.video import ClipSplitter, open_video

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
SECRET = "pipeline-test-secret"
VISIBILITY_S = 2.0
FRAMES = 160


@pytest.fixture(scope="module")
def camera_videos(tmp_path_factory):
    """Four 6.4 s videos (three known actions, one novel), replayed in real time as four cameras."""
    root = tmp_path_factory.mktemp("cameras")
    synthesize(root, videos_per_class=1, seed=11, width=56, height=32, num_frames=FRAMES,
               classes=["MoveLeft", "MoveRight", "Grow"], novel_classes=["Orbit"], novel_videos_per_class=1,
               progress=False)
    return sorted(root.rglob("*.avi"))


def pending(server: RedisServer, topic: str, group: str) -> int:
    """Entries of `topic` delivered to `group` and not acknowledged (a batch a worker is holding)."""
    client = server.client()
    try:
        return int(client.xpending(f"it:{topic}", group)["pending"])
    finally:
        client.close()


def expected_keys(videos: list[Path]) -> set[str]:
    splitter = ClipSplitter(8, 8)
    return {f"cam{index}:{seq}" for index, path in enumerate(videos)
            for seq in range(len(splitter.plan(open_video(path).num_frames)))}


def test_workers_survive_crashes_a_redis_restart_and_a_failing_webhook(camera_videos, tiny_bundle, tmp_path):
    with RedisServer(appendonly=True) as redis_server, WebhookServer(secret=SECRET) as hook:
        hook.plan(Reply.fail(500), times=4)
        hook.plan(Reply.hang(1.5))
        state = tmp_path / "state"
        config = write_config(tmp_path / "redis.yaml", {
            "sources": [{"id": f"cam{i}", "path": str(path), "pace": 1.0} for i, path in enumerate(camera_videos)],
            "bundle": str(tiny_bundle),
            "bus": {"url": redis_server.url, "namespace": "it", "max_backlog": 32,
                    "visibility_timeout_ms": int(VISIBILITY_S * 1000), "reconnect_timeout_s": 60},
            "classifier": {"max_batch": 16, "max_wait_ms": 1000, "threads": 1},
            "density": {"alpha": 0.5, "max_batch": 16, "max_wait_ms": 1000},
            "alerts": {"rules": {"kinds": {"novel": {}, "adversarial": {}}},
                       "jsonl": str(state / "alerts.jsonl"), "verdicts_jsonl": str(state / "verdicts.jsonl"),
                       "thumbnails_dir": str(state / "thumbs"), "reorder_window_s": 1.5,
                       "webhooks": {"urls": [hook.url], "timeout_s": 0.5, "ledger": str(state / "ledger.jsonl"),
                                    "dead_letters": str(state / "dead.jsonl"),
                                    "retry": {"max_attempts": 10, "base_delay_s": 0.1, "max_delay_s": 0.5}}},
            "ops": {"log_format": "json"},
        })
        env = {**os.environ, "CLIPWATCH_WEBHOOK_SECRET": SECRET, "OMP_NUM_THREADS": "1"}
        logs = tmp_path / "logs"
        logs.mkdir()
        workers = {name: WorkerProcess(name, config, logs, env) for name in ("sink", "density", "classifier", "decoder")}
        with RedisBus(redis_server.url, namespace="it") as probe:
            probe.publish("clips", b"\xc1 this is not a clip", key="garbage:0")
        verdicts = lambda: read_jsonl(state / "verdicts.jsonl")  # noqa: E731
        try:
            for name in ("sink", "density", "classifier"):
                workers[name].start()
            for name in ("sink", "density", "classifier"):  # ready before the cameras start streaming
                assert workers[name].healthz()["status"] == "ok"
            workers["decoder"].start()
            wait_for(lambda: len(verdicts()) >= 12, 90, what="12 verdicts")
            assert all(workers[name].healthz()["status"] == "ok" for name in workers)

            assert workers["decoder"].process.poll() is None, "the cameras are still streaming"
            for name, topic in (("density", "embeddings"), ("classifier", "clips")):
                wait_for(lambda t=topic, g=name: pending(redis_server, t, g), 30, 0.01, what=f"{name} holding a batch")
                assert workers[name].kill() == -signal.SIGKILL
            killed = time.monotonic()
            keys = expected_keys(camera_videos)
            assert len(verdicts()) < len(keys)

            redis_server.kill()  # mid-run: the decoder and the sink are connected, the dead workers' batches pending
            time.sleep(0.5)
            redis_server.start()
            time.sleep(max(0.0, killed + VISIBILITY_S - time.monotonic()))  # a supervisor's restart delay
            workers["classifier"].start()
            workers["density"].start()
            assert workers["decoder"].process.wait(90) == 0
            wait_for(lambda: len(verdicts()) >= len(keys), 90, what=f"{len(keys)} verdicts")
            flagged = {f"{r['clip_key']}:{r['verdict']}" for r in verdicts() if r["verdict"] != "normal"}
            wait_for(lambda: len(read_jsonl(state / "alerts.jsonl")) >= len(flagged), 10, what="alerts")
            wait_for(lambda: len(hook.accepted()) >= len(flagged), 60, what="webhook deliveries")
            for name in ("classifier", "density", "sink"):
                assert workers[name].terminate() == 0, f"{name} did not exit cleanly"
        finally:
            for worker in workers.values():
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
        with RedisBus(redis_server.url, namespace="it") as probe:
            dead = probe.dead_letters("clips")
        requests = hook.requests

    records = verdicts()
    counts = Counter(record["clip_key"] for record in records)
    assert set(counts) == keys and set(counts.values()) == {1}, "every clip scored exactly once"

    alerts = read_jsonl(state / "alerts.jsonl")
    alert_keys = [alert["idempotency_key"] for alert in alerts]
    assert len(alert_keys) == len(set(alert_keys)) and set(alert_keys) == flagged

    accepted = [r for r in requests if r.status == 200]
    delivered = [r.header("X-Clipwatch-Idempotency-Key") for r in accepted]
    assert sorted(delivered) == sorted(alert_keys), "each alert delivered exactly once"
    assert all(verify_signature(r.body, r.header("X-Clipwatch-Signature"), SECRET) for r in requests)
    assert [r.status for r in requests[:5]] == [500] * 4 + [None]
    by_stream = defaultdict(list)
    for request in accepted:
        body = json.loads(request.body)
        by_stream[body["stream_id"]].append(body["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_stream.values()), "in order per stream"

    assert len(dead) == 1 and dead[0].key == "garbage:0"
    assert dead[0].reason.startswith(f"clips {dead[0].entry_id}: not msgpack: ")
    assert "reconnecting" in workers["sink"].log.read_text(), "the sink rode out the Redis restart"
    assert "Traceback" not in "".join(path.read_text() for path in logs.iterdir())
