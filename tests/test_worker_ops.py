"""A worker process's operations: /healthz per component, the ops token, shutdown while Redis is down, a bad password.

Real processes (`python -m workers worker ...`) against a real redis-server; a live camera that cannot be reached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pipeline_helpers import wait_for, write_config
from redis_server import RedisServer

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]


def start_worker(name: str, config: Path, log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "workers", "worker", name, "--config", str(config)],
                                cwd=REPO, env={**os.environ, **env}, stdout=stream, stderr=stream)


def ops_port(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        if line.startswith("{") and "ops_port" in line:
            return json.loads(line)["ops_port"]
    return None


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def sink_config(path: Path, url: str, state: Path, bundle: Path, **ops) -> Path:
    return write_config(path, {
        "bundle": str(bundle),
        "bus": {"url": url, "namespace": "ops", "reconnect_timeout_s": 300},
        "alerts": {"jsonl": str(state / "alerts.jsonl"), "verdicts_jsonl": str(state / "verdicts.jsonl")},
        "ops": {"log_format": "json", "stop_timeout_s": 2, **ops},
    })


def test_healthz_names_the_bus_and_sigterm_exits_in_time_while_redis_is_down(tiny_bundle, tmp_path):
    with RedisServer() as redis_server:
        config = sink_config(tmp_path / "sink.yaml", redis_server.url, tmp_path / "state", tiny_bundle,
                             token_env="OPS_TOKEN")
        log = tmp_path / "sink.log"
        worker = start_worker("sink", config, log, OPS_TOKEN="t0ken")
        try:
            port = wait_for(lambda: ops_port(log), 60, what="ops port")
            healthz = f"http://127.0.0.1:{port}/healthz"
            assert get(healthz)[0] == 401
            assert get(f"http://127.0.0.1:{port}/metrics", "wrong")[0] == 401
            components = wait_for(lambda: (r := get(healthz, "t0ken"))[0] == 200 and "sink" in (
                c := json.loads(r[1])["components"]) and c, 30, what="healthy sink")
            assert components["bus"] == "ok" and components["sink"] == "ok" and components["health"] == "ok"

            redis_server.kill()
            status, body = wait_for(lambda: (r := get(healthz, "t0ken"))[0] == 503 and r, 30, what="503")
            report = json.loads(body)
            assert report["status"] == "degraded"
            assert report["components"]["bus"].startswith("degraded: redis at 127.0.0.1:")
            assert "unreachable" in report["components"]["bus"]
            metrics = get(f"http://127.0.0.1:{port}/metrics", "t0ken")[1].decode()
            assert "clipwatch_bus_up 0.0" in metrics

            started = time.monotonic()
            worker.send_signal(signal.SIGTERM)  # reconnect_timeout_s is 300: only the stop timeout can end this
            assert worker.wait(30) == 0
            assert time.monotonic() - started < 2 + 8
        finally:
            if worker.poll() is None:
                worker.kill()
    assert "closing the bus" in log.read_text()


def test_a_wrong_redis_password_fails_the_worker_at_once(tiny_bundle, tmp_path):
    with RedisServer(extra_args=("--requirepass", "right")) as redis_server:
        url = f"redis://:wrong@127.0.0.1:{redis_server.port}/0"
        log = tmp_path / "sink.log"
        worker = start_worker("sink", sink_config(tmp_path / "sink.yaml", url, tmp_path / "state", tiny_bundle), log)
        try:
            assert worker.wait(60) == 1
        finally:
            if worker.poll() is None:
                worker.kill()
    text = log.read_text()
    assert "check the password" in text and "Traceback" not in text


def test_an_exposed_ops_port_without_its_token_is_refused_at_start(tiny_bundle, tmp_path):
    config = sink_config(tmp_path / "sink.yaml", "redis://127.0.0.1:1/0", tmp_path / "state", tiny_bundle,
                         host="0.0.0.0", token_env="OPS_TOKEN_NOT_SET")
    env = {key: value for key, value in os.environ.items() if key != "OPS_TOKEN_NOT_SET"}
    done = subprocess.run([sys.executable, "-m", "workers", "worker", "sink", "--config", str(config)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "OPS_TOKEN_NOT_SET is not set, and ops.host 0.0.0.0 is not loopback" in done.stderr
    assert "Traceback" not in done.stderr


def test_healthz_is_degraded_while_the_only_camera_is_down(tiny_bundle, tmp_path):
    with RedisServer() as redis_server:
        config = write_config(tmp_path / "decoder.yaml", {
            "sources": [{"id": "gate", "uri": "rtsp://127.0.0.1:9/nothing-listens-here", "open_timeout_s": 1,
                         "backoff_initial_s": 0.5, "backoff_max_s": 1}],
            "bundle": str(tiny_bundle),
            "bus": {"url": redis_server.url, "namespace": "cam"},
            "ops": {"log_format": "json", "stop_timeout_s": 2},
        })
        log = tmp_path / "decoder.log"
        worker = start_worker("decoder", config, log)
        try:
            port = wait_for(lambda: ops_port(log), 60, what="ops port")
            status, body = wait_for(lambda: (r := get(f"http://127.0.0.1:{port}/healthz"))[0] == 503 and r, 60,
                                    what="503 for the camera")
            components = json.loads(body)["components"]
            assert components["camera gate"].startswith("degraded: ")
            assert components["bus"] == "ok"
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        finally:
            if worker.poll() is None:
                worker.kill()


def test_progress_line_counts_clips_verdicts_alerts_and_the_rate():
    from workers.ops import PipelineMetrics
    from workers.ops.progress import progress_line

    metrics = PipelineMetrics()
    metrics.clips.labels(stream="a").inc(7)
    metrics.clips.labels(stream="b").inc(5)
    metrics.verdicts.labels(verdict="normal").inc(8)
    metrics.verdicts.labels(verdict="novel").inc(2)
    metrics.alerts.labels(kind="novel").inc()
    assert progress_line(metrics, 12.4, scored_before=4, interval=2.0) == \
        "12 s: 12 clips decoded, 10 scored (normal 8, novel 2, adversarial 0), 1 alerts, 3.0 clips/s"
