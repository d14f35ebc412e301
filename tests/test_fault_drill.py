"""The fault drill of issue 13, as a test: real processes, a real redis-server with AOF, a real webhook receiver.

The same input runs twice over Redis Streams: once without faults (the reference), once with 20 random SIGKILLs of
the four workers (each restarted, as a supervisor would), two SIGKILL + restarts of Redis itself and a 60 s webhook
outage. Every clip must be scored exactly once, the alert set (idempotency keys) must equal the reference's, and
every alert must reach the receiver exactly once. A second, shorter drill runs Redis without persistence: the loss
must be reported (error line, metric, /healthz degraded), never silent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from pipeline_helpers import WorkerProcess, read_jsonl, wait_for, write_config
from redis_server import RedisServer
from webhook_server import Reply, WebhookServer

from pipeline.data import synthesize
from pipeline.video import ClipSplitter, open_video

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
SECRET = "drill-secret"
WORKERS = ("sink", "density", "classifier", "decoder")


@pytest.fixture(scope="module")
def drill_videos(tmp_path_factory):
    """Six cameras (four known actions, two novel), 240 frames each."""
    root = tmp_path_factory.mktemp("drill")
    synthesize(root, videos_per_class=1, seed=23, width=56, height=32, num_frames=240,
               classes=["MoveLeft", "MoveRight", "Grow", "Shrink"], novel_classes=["Orbit", "Blink"],
               novel_videos_per_class=1, progress=False)
    return sorted(root.rglob("*.avi"))


def drill_config(path: Path, videos: list[Path], bundle: Path, url: str, state: Path, hook_url: str,
                 pace: float | None) -> Path:
    return write_config(path, {
        "sources": [{"id": f"cam{index}", "path": str(video), **({"pace": pace} if pace else {})}
                    for index, video in enumerate(videos)],
        "bundle": str(bundle),
        # max_batch 1: a clip's scores do not depend on which clips share its batch, so both runs agree exactly
        "bus": {"url": url, "namespace": "drill", "max_backlog": 16, "visibility_timeout_ms": 3000,
                "max_deliveries": 20, "reconnect_timeout_s": 120},
        "classifier": {"max_batch": 1, "threads": 1},
        "density": {"alpha": 0.5, "max_batch": 1},
        "alerts": {"rules": {"kinds": {"novel": {"k": 2, "n": 3, "cooldown_s": 2.0},
                                       "adversarial": {"k": 1, "n": 1, "cooldown_s": 1.0}}},
                   "jsonl": str(state / "alerts.jsonl"), "verdicts_jsonl": str(state / "verdicts.jsonl"),
                   # longer than a redelivery (visibility + a restart; held verdicts have their lease extended)
                   "reorder_window_s": 45.0,
                   "webhooks": {"urls": [hook_url], "timeout_s": 1.0, "ledger": str(state / "ledger.jsonl"),
                                "dead_letters": str(state / "dead.jsonl"),
                                "retry": {"base_delay_s": 0.5, "max_delay_s": 4.0, "max_age_s": 900}}},
        "ops": {"log_format": "json", "stop_timeout_s": 5},
    })


def expected_keys(videos: list[Path]) -> set[str]:
    splitter = ClipSplitter(8, 8)
    return {f"cam{index}:{seq}" for index, video in enumerate(videos)
            for seq in range(len(splitter.plan(open_video(video).num_frames)))}


def run_drill(videos, bundle, root: Path, *, faults: bool) -> dict:
    state, logs = root / "state", root / "logs"
    state.mkdir(parents=True)
    logs.mkdir()
    keys = expected_keys(videos)
    env = {**os.environ, "CLIPWATCH_WEBHOOK_SECRET": SECRET, "OMP_NUM_THREADS": "1"}
    kills: Counter[str] = Counter()
    with RedisServer(appendonly=True) as redis_server, WebhookServer(secret=SECRET) as hook:
        config = drill_config(root / "drill.yaml", videos, bundle, redis_server.url, state, hook.url,
                              pace=0.5 if faults else None)
        procs = {name: WorkerProcess(name, config, logs, env) for name in WORKERS}
        verdicts = lambda: read_jsonl(state / "verdicts.jsonl")  # noqa: E731
        try:
            for name in WORKERS:
                procs[name].start()
            if faults:
                rng = random.Random(13)
                outage_ends = time.monotonic() + 5 + 60
                time.sleep(5)
                hook.default = Reply.fail(503)  # the receiver is down for 60 s from here
                for kill in range(20):
                    time.sleep(rng.uniform(1.5, 3.5))
                    if kill in (6, 13):
                        redis_server.kill()
                        time.sleep(rng.uniform(0.5, 2.0))
                        redis_server.start()
                    alive = [name for name in WORKERS if procs[name].alive]
                    if not alive:
                        continue
                    # the decoder ends with its files: kill it first, so every worker is killed at least once
                    victim = "decoder" if kill == 0 and "decoder" in alive else rng.choice(alive)
                    procs[victim].kill()
                    kills[victim] += 1
                    time.sleep(rng.uniform(0.2, 1.5))
                    procs[victim].start()
                time.sleep(max(0.0, outage_ends - time.monotonic()))
                hook.default = Reply.accept()
            assert procs["decoder"].process.wait(300) == 0, "the decoder read every file to its end"
            wait_for(lambda: {r["clip_key"] for r in verdicts()} >= keys, 300, 0.5, what=f"{len(keys)} verdicts")
            flagged = lambda: read_jsonl(state / "alerts.jsonl")  # noqa: E731
            time.sleep(2)
            wait_for(lambda: {r.header("X-Clipwatch-Idempotency-Key") for r in hook.accepted()}
                     >= {a["idempotency_key"] for a in flagged()}, 120, 0.5, what="every alert delivered")
            for name in ("classifier", "density", "sink"):
                procs[name].process.send_signal(signal.SIGTERM)
                assert procs[name].process.wait(30) == 0, f"{name} did not exit cleanly"
        finally:
            for proc in procs.values():
                if proc.alive:
                    proc.process.kill()
        return {"verdicts": verdicts(), "alerts": flagged(), "accepted": hook.accepted(), "keys": keys,
                "kills": kills, "logs": logs}


def test_twenty_kills_two_redis_restarts_and_a_webhook_outage_change_nothing(drill_videos, tiny_bundle, tmp_path):
    reference = run_drill(drill_videos, tiny_bundle, tmp_path / "reference", faults=False)
    drill = run_drill(drill_videos, tiny_bundle, tmp_path / "drill", faults=True)
    assert sum(drill["kills"].values()) == 20 and len(drill["kills"]) == 4, drill["kills"]

    for run in (reference, drill):
        counts = Counter(record["clip_key"] for record in run["verdicts"])
        assert set(counts) == run["keys"] and set(counts.values()) == {1}, "every clip scored exactly once"
        alert_keys = [alert["idempotency_key"] for alert in run["alerts"]]
        assert len(alert_keys) == len(set(alert_keys)), "no alert written twice"
        delivered = Counter(r.header("X-Clipwatch-Idempotency-Key") for r in run["accepted"])
        assert set(delivered) == set(alert_keys) and set(delivered.values()) == {1}, "each alert delivered once"
        assert all(r.signature_valid for r in run["accepted"])

    reference_alerts = {alert["idempotency_key"] for alert in reference["alerts"]}
    assert len(reference_alerts) >= 5, "the input raises alerts, so the comparison means something"
    assert {alert["idempotency_key"] for alert in drill["alerts"]} == reference_alerts
    assert {r["clip_key"]: r["verdict"] for r in drill["verdicts"]} == \
        {r["clip_key"]: r["verdict"] for r in reference["verdicts"]}


def test_redis_restarted_without_persistence_is_reported_not_silent(drill_videos, tiny_bundle, tmp_path):
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    env = {**os.environ, "CLIPWATCH_WEBHOOK_SECRET": SECRET, "OMP_NUM_THREADS": "1"}
    with RedisServer(appendonly=False) as redis_server, WebhookServer(secret=SECRET) as hook:
        config = drill_config(tmp_path / "drill.yaml", drill_videos[:2], tiny_bundle, redis_server.url, state,
                              hook.url, pace=1.0)
        procs = {name: WorkerProcess(name, config, logs, env) for name in ("sink", "decoder")}
        try:
            for proc in procs.values():
                proc.start()
            for proc in procs.values():
                assert proc.ops("/healthz")[0] == 200
            # the classifier is down: clips queue up in Redis, then Redis restarts empty
            wait_for(lambda: redis_server.client().xlen("drill:clips") >= 8, 60, what="queued clips")
            redis_server.kill()
            redis_server.start()
            for proc in procs.values():
                status, body = wait_for(lambda p=proc: (r := p.ops("/healthz"))[0] == 503 and b"its data" in r[1]
                                        and r, 30, what=f"{proc.name} degraded by the data loss")
                assert json.loads(body)["components"]["bus"].startswith("degraded: redis at 127.0.0.1:")
                metrics = proc.ops("/metrics")[1].decode()
                assert "clipwatch_bus_resets 1.0" in metrics and "clipwatch_bus_up 0.0" in metrics
                assert "entries queued before" in proc.log.read_text()
        finally:
            for proc in procs.values():
                if proc.alive:
                    proc.process.kill()
