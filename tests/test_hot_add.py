"""Cameras added and removed while the pipeline runs (issue 14.5): SIGHUP re-reads the config file's sources in a
real `clipwatch run` process; the console's POST / DELETE /api/cameras change them in a running pipeline; the
decoder keeps API cameras across reloads and refuses clashes. Inputs are real encoded videos replayed live."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from pipeline_helpers import read_jsonl, wait_for, write_config
from redis_server import free_port
from videos import write_indexed_video

from pipeline.bus import InProcessBus
from pipeline.config import SourceConfig, load_config
from pipeline.console.openapi import document
from pipeline.detect import Detector
from pipeline.errors import ClipwatchError
from pipeline.stream.messages import decode
from pipeline.stream.topology import stage
from workers.decoder import DecoderWorker
from workers.launch import run_pipeline, run_worker
from workers.ops import PipelineMetrics

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Two 1.6 s videos (5 clips of the tiny model's 8 frames each) to replay as cameras."""
    root = tmp_path_factory.mktemp("cameras")
    return {name: write_indexed_video(root / f"{name}.mp4", 40, fps=25.0) for name in ("lobby", "yard")}


def camera(name: str, path: Path, **options) -> dict:
    return {"id": name, "path": str(path), "loop": True, "pace": 1.0, **options}


def config_data(bundle: Path, sources: list[dict], **sections) -> dict:
    return {"sources": sources, "bundle": str(bundle), "classifier": {"max_batch": 4, "max_wait_ms": 20},
            "alerts": {"jsonl": "alerts.jsonl", "verdicts_jsonl": "verdicts.jsonl", "health_jsonl": "health.jsonl"},
            "ops": {"base_port": 0, "log_format": "json"}, **sections}


def verdict_counts(folder: Path) -> Counter:
    return Counter(record["stream_id"] for record in read_jsonl(folder / "verdicts.jsonl"))


def removed(folder: Path, stream_id: str) -> bool:
    return any(event["stream_id"] == stream_id and event["detail"] == "removed"
               for event in read_jsonl(folder / "health.jsonl"))


def published(port: int, stream_id: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = f'clipwatch_clips_published_total{{stream="{stream_id}"}} '
    return int(float(next(line[len(prefix):] for line in text.splitlines() if line.startswith(prefix))))


def call(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    """(status, headers, parsed JSON) of one request to the console API."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.load(error)


def grows(count, by: int, timeout: float, what: str) -> None:
    start = count()
    wait_for(lambda: count() >= start + by, timeout, what=what)


def test_sighup_adds_and_removes_sources_and_refuses_a_broken_config(videos, tiny_bundle, tmp_path):
    path = write_config(tmp_path / "live.yaml", config_data(tiny_bundle, [camera("lobby", videos["lobby"])]))
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "workers", "run", "--config", str(path), "--progress", "0"],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        port = wait_for(lambda: next((json.loads(line)["ops_port"] for line in log.read_text().splitlines()
                                      if '"ops_port"' in line), None), 60, what="ops port in the JSON log")
        wait_for(lambda: verdict_counts(tmp_path)["lobby"] >= 2, 60, what="verdicts of lobby")

        # added: yard starts, lobby goes on
        write_config(path, config_data(tiny_bundle, [camera("lobby", videos["lobby"]),
                                                     camera("yard", videos["yard"])]))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: verdict_counts(tmp_path)["yard"] >= 3, 60, what="verdicts of the added yard")
        grows(lambda: verdict_counts(tmp_path)["lobby"], 3, 30, "lobby going on after the reload")

        # removed: lobby stops, every clip it published is still scored, yard goes on
        write_config(path, config_data(tiny_bundle, [camera("yard", videos["yard"])]))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: removed(tmp_path, "lobby"), 30, what="lobby's removed event")
        last = published(port, "lobby")
        wait_for(lambda: verdict_counts(tmp_path)["lobby"] == last, 30, what="lobby's clips in flight scored")
        grows(lambda: verdict_counts(tmp_path)["yard"], 3, 30, "yard going on after lobby's removal")
        assert published(port, "lobby") == last == verdict_counts(tmp_path)["lobby"]

        # a broken config: one line, nothing changes
        path.write_text("sources: [{id: gate, uri: rtsp://}\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in log.read_text(), 30, what="the refusal logged")
        grows(lambda: verdict_counts(tmp_path)["yard"], 3, 30, "yard going on after the refused reload")
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, log.read_text()[-2000:]
    lines = log.read_text().splitlines()
    refused = [json.loads(line) for line in lines if "reload refused" in line]
    assert len(refused) == 1 and refused[0]["level"] == "ERROR" and "invalid YAML" in refused[0]["message"]
    assert sum("sources reloaded" in line for line in lines) == 2
    verdicts = read_jsonl(tmp_path / "verdicts.jsonl")
    keys = [record["clip_key"] for record in verdicts]
    assert len(keys) == len(set(keys))
    assert stdout.strip().splitlines()[-1].startswith("run stopped: ")


def test_the_decoder_worker_reloads_on_sighup(videos, tiny_bundle, tmp_path, caplog):
    path = write_config(tmp_path / "worker.yaml", config_data(tiny_bundle, [camera("lobby", videos["lobby"])],
                                                              bus={"url": "memory://", "max_backlog": 100_000}))
    stop, default = threading.Event(), signal.getsignal(signal.SIGHUP)

    def operate() -> None:
        try:
            wait_for(lambda: signal.getsignal(signal.SIGHUP) is not default, 30, what="the SIGHUP handler")
            write_config(path, config_data(tiny_bundle, [camera("yard", videos["yard"])],
                                           bus={"url": "memory://", "max_backlog": 100_000}))
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: any("sources reloaded" in r.getMessage() for r in caplog.records), 30,
                     what="the reload")
        finally:
            stop.set()

    helper = threading.Thread(target=operate)
    with caplog.at_level(logging.INFO, logger="workers.decoder"):
        helper.start()
        assert run_worker("decoder", load_config(path), stop=stop, port=0) == 0  # in the main thread: signals
    helper.join()
    assert signal.getsignal(signal.SIGHUP) is default
    assert any("sources reloaded" in r.getMessage() and "1 added, 1 removed" in r.getMessage()
               for r in caplog.records)


def test_console_adds_and_removes_cameras_in_a_running_pipeline(videos, tiny_bundle, tmp_path):
    port = free_port()
    path = write_config(tmp_path / "console.yaml", config_data(
        tiny_bundle, [camera("lobby", videos["lobby"])], console={"port": port, "db": "console.db"}))
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_pipeline(load_config(path), stop=stop)))
    thread.start()
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: verdict_counts(tmp_path)["lobby"] >= 1, 60, what="verdicts of lobby")
        spec = call(f"{url}/openapi.json")[2]
        assert "post" in spec["paths"]["/api/cameras"] and "delete" in spec["paths"]["/api/cameras/{id}"]

        body = json.dumps(camera("yard", os.path.relpath(videos["yard"], tmp_path))).encode()  # as the file's
        status, _, added = call(f"{url}/cameras", "POST", body)
        assert status == 201 and added == {"id": "yard", "camera": "yard", "state": "added"}
        wait_for(lambda: verdict_counts(tmp_path)["yard"] >= 2, 60, what="verdicts of the added yard")

        for bad, code, words in [(camera("yard", videos["yard"]), 409, "in use"),
                                 ({"id": "gate", "urii": "rtsp://cam/1"}, 400, "did you mean 'uri'"),
                                 ({"id": "gate", "uri": "rtsp://${HOME}/1"}, 400, "HOME is not set"),
                                 ({"uri": "rtsp://cam/1"}, 400, "'id'")]:
            status, _, error = call(f"{url}/cameras", "POST", json.dumps(bad).encode())
            assert status == code and words in error["error"] and "\n" not in error["error"], error
        status, _, error = call(f"{url}/cameras", "POST", b"{}", {"Origin": "http://evil.example"})
        assert status == 403

        status, _, gone = call(f"{url}/cameras/yard", "DELETE")
        assert status == 200 and gone["state"] == "removed"
        wait_for(lambda: removed(tmp_path, "yard"), 30, what="yard's removed event")
        assert call(f"{url}/cameras/yard", "DELETE")[0] == 404

        def yard_removed() -> dict | None:
            rows = {row["camera"]: row for row in call(f"{url}/cameras")[2]["cameras"]}
            return rows if rows.get("yard", {}).get("detail") == "removed" else None

        assert wait_for(yard_removed, 30, what="yard removed in the console")["yard"]["state"] == "ended"
        grows(lambda: verdict_counts(tmp_path)["lobby"], 2, 30, "lobby going on")
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and result["summary"].published.keys() == {"lobby", "yard"}


def test_the_camera_endpoints_are_documented_only_with_a_decoder():
    assert "/api/cameras/{id}" not in document()["paths"] and "post" not in document()["paths"]["/api/cameras"]
    assert "/api/cameras/{id}" in document(cameras=True)["paths"]


def test_decoder_keeps_api_cameras_across_reloads_and_refuses_clashes(videos, tiny_bundle, tmp_path, caplog):
    fast = {"loop": True, "pace": 8.0}
    path = write_config(tmp_path / "decoder.yaml", config_data(tiny_bundle, [camera("lobby", videos["lobby"],
                                                                                    **fast)]))
    bus = InProcessBus(max_backlog=100_000)
    health_topic = stage("health").input_topic
    bus.ensure_group(health_topic, "test")
    stop = threading.Event()
    decoder = DecoderWorker(load_config(path), bus, stop=stop, metrics=PipelineMetrics(),
                            preprocessing=Detector.preprocessing(tiny_bundle))
    thread = threading.Thread(target=decoder.run)
    thread.start()
    try:
        assert decoder.add(SourceConfig(id="yard", path=videos["yard"], **fast)) == "yard"
        with pytest.raises(ClipwatchError, match="'yard' is in use"):
            decoder.add(SourceConfig(id="yard", path=videos["lobby"]))
        with caplog.at_level(logging.INFO, logger="workers.decoder"):
            write_config(path, config_data(tiny_bundle, [camera("lobby", videos["lobby"], **fast),
                                                         camera("yard", videos["lobby"])]))
            assert not decoder.reload()  # the file's yard is another source than the API's
            write_config(path, config_data(tiny_bundle, [camera("lobby", videos["lobby"], **fast),
                                                         {"id": "gate", "path": str(videos["lobby"])}]))
            assert decoder.reload()
        lines = [record.getMessage() for record in caplog.records if "reload" in record.getMessage()]
        assert len(lines) == 2 and "reload refused" in lines[0] and "'yard'" in lines[0] and "\n" not in lines[0]
        assert lines[1].startswith(f"decoder: sources reloaded from {path}: 1 added, 0 removed")
        wait_for(lambda: decoder.report.published.get("gate") == 5, 30, what="gate's 5 clips")
        time.sleep(0.5)
        assert decoder.remove("gate") and decoder.remove("yard") and not decoder.remove("nope")
        wait_for(lambda: not any(feed.thread.is_alive() for feed in decoder._stopping), 10, what="yard stopped")
        before = dict(decoder.report.published)
        time.sleep(0.5)
        assert decoder.report.published["yard"] == before["yard"] and decoder.report.published["lobby"] > before[
            "lobby"]
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    events = [decode(delivery.payload) for delivery in bus.consume(health_topic, "test", "t", count=10_000,
                                                                    block_ms=0)]
    assert [(e.state, e.detail) for e in events if e.stream_id == "gate"][-2:] == [("ended", "end of file, 5 clips"),
                                                                                   ("ended", "removed")]
    assert [(e.state, e.detail) for e in events if e.stream_id == "yard"][-1] == ("ended", "removed")
    with pytest.raises(ClipwatchError, match="stopped"):
        decoder.add(SourceConfig(id="late", path=videos["yard"]))


def test_a_changed_source_restarts_after_its_old_thread_has_ended(videos, tiny_bundle, tmp_path, monkeypatch):
    path = write_config(tmp_path / "decoder.yaml", config_data(tiny_bundle, [camera("lobby", videos["lobby"],
                                                                                    loop=True, pace=8.0)]))
    bus = InProcessBus(max_backlog=100_000)
    health_topic = stage("health").input_topic
    bus.ensure_group(health_topic, "test")
    stop = threading.Event()
    decoder = DecoderWorker(load_config(path), bus, stop=stop, metrics=PipelineMetrics(),
                            preprocessing=Detector.preprocessing(tiny_bundle))
    original = DecoderWorker._run_source

    def slow_to_end(self, feed):  # an old thread that takes a while to wind down (a reader closing, back-pressure)
        original(self, feed)
        if feed.removed:
            time.sleep(1.0)

    monkeypatch.setattr(DecoderWorker, "_run_source", slow_to_end)
    thread = threading.Thread(target=decoder.run)
    thread.start()
    try:
        wait_for(lambda: decoder.report.published.get("lobby", 0) > 0, 30, what="lobby's first clip")
        write_config(path, config_data(tiny_bundle, [camera("lobby", videos["lobby"], loop=True, pace=4.0)]))
        assert decoder.reload()
        assert not decoder.reload(), "a second reload waits for the restart"
        wait_for(lambda: any(feed.source.pace == 4.0 for feed in decoder._feeds), 30, what="the restarted lobby")
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    events = [decode(d.payload) for d in bus.consume(health_topic, "test", "t", count=10_000, block_ms=0)]
    lobby = [(e.state, e.detail) for e in events if e.stream_id == "lobby"]
    removed = lobby.index(("ended", "removed"))
    assert any(state == "up" for state, _ in lobby[removed + 1:]), "the restarted camera is up after the old one ended"
