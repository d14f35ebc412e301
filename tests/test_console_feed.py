"""Feeding the console: the sink serving it live from a pipeline config, the ``console`` config section, the run
folder follower on torn and malformed lines, and what ``clipwatch console`` refuses."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from pipeline_helpers import verdict, wait_for
from test_console_api import T0, call, make_alert

from pipeline.bus import InProcessBus
from pipeline.config import ConfigError, parse_config
from pipeline.console import ConsoleStore, RunFollower
from pipeline.demo import DEFAULT_BUNDLE
from pipeline.stream.messages import HealthMessage, encode
from workers.loop import StageLoop
from workers.ops import PipelineMetrics
from workers.stages import build_stages

pytestmark = pytest.mark.timeout(120)


def test_the_sink_feeds_and_serves_the_console_when_configured(tmp_path):
    config = parse_config({"bundle": str(DEFAULT_BUNDLE), "alerts": {
        "rules": {"kinds": {"novel": {"k": 1, "n": 1}}}, "jsonl": str(tmp_path / "alerts.jsonl"),
        "thumbnails_dir": str(tmp_path / "thumbs"), "reorder_window_s": 0},
        "console": {"port": 0}})
    metrics = PipelineMetrics()
    stages = build_stages("sink", config, metrics)
    sink, health = stages
    url = sink.console.url.rstrip("/")
    assert health.console is sink.console and (tmp_path / "console.db").is_file()
    bus = InProcessBus()
    bus.publish("health", encode(HealthMessage(stream_id="gate", state="up", time=T0)))
    for seq, kind in enumerate(["normal", "novel"]):
        bus.publish("verdicts", encode(verdict("gate", seq, kind)), key=f"gate:{seq}")
    loops = [StageLoop(stage, bus, consumer="test", stop=threading.Event(), metrics=metrics.stage(stage.name),
                       idle_wait_s=0.01) for stage in stages]
    deadline = time.monotonic() + 20
    while any([loop.run_once() for loop in loops]) and time.monotonic() < deadline:
        pass
    _, _, page = wait_for(lambda: (r := call(f"{url}/api/alerts"))[2]["alerts"] and r, 10, what="the live alert")
    [alert] = page["alerts"]
    assert alert["key"] == "gate:1:novel" and alert["thumbnail"] is not None
    assert call(f"{url}{alert['thumbnail']}")[0] == 200
    _, _, cameras = call(f"{url}/api/cameras")
    [camera] = cameras["cameras"]
    assert (camera["camera"], camera["state"], camera["counts"]) == ("gate", "up", {"normal": 1, "novel": 1})
    for stage in stages:
        stage.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/api/alerts", timeout=2)


def test_console_config_section(tmp_path):
    def config(console: dict):
        return parse_config({"bundle": str(DEFAULT_BUNDLE), "console": console}, base=tmp_path,
                            environ={"PORT": "9001"})

    assert parse_config({"bundle": str(DEFAULT_BUNDLE)}).console is None
    settings = config({"port": "${PORT}", "db": "state/console.db"}).console
    assert settings.port == 9001 and settings.db == tmp_path / "state" / "console.db"
    assert config({}).console.db_path(tmp_path / "out" / "alerts.jsonl") == tmp_path / "out" / "console.db"
    with pytest.raises(ConfigError, match=r"console\.prot: unknown key \(did you mean 'port'\?\)"):
        config({"prot": 1})
    exposed = config({"host": "0.0.0.0", "token_env": "CONSOLE_TOKEN"}).console
    with pytest.raises(ConfigError, match="console.token_env: CONSOLE_TOKEN is not set"):
        exposed.token(environ={})
    assert exposed.token(environ={"CONSOLE_TOKEN": "abc"}) == "abc"


def test_the_follower_reads_complete_lines_only_and_skips_bad_ones(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    store = ConsoleStore(tmp_path / "console.db")
    follower = RunFollower(store, run, chunk_bytes=4096)
    assert follower.catch_up() == 0  # an empty folder: a pipeline that has not written yet
    line = make_alert("gate/a", 0).to_json_bytes() + b"\n"
    (run / "alerts.jsonl").write_bytes(b"not json\n" + b'{"type": "other"}\n' + line[:50])
    follower.catch_up()
    assert store.alerts()[1] == 0 and "not JSON" in caplog.text and "alert skipped" in caplog.text
    with open(run / "alerts.jsonl", "ab") as handle:  # the writer finishes its line, then a huge one and another
        handle.write(line[50:] + b"[" * 10_000 + b"\n" + make_alert("gate/a", 1).to_json_bytes() + b"\n")
    follower.catch_up()
    assert [a["key"] for a in store.alerts()[0]] == ["gate/a:1:adversarial", "gate/a:0:adversarial"]
    assert "a line of 10001 bytes" in caplog.text
    store.close()


def test_the_console_command_refuses_what_it_cannot_serve(tmp_path, capsys, monkeypatch):
    from pipeline.cli import main

    assert main(["console", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"clipwatch console: error: {tmp_path / 'missing'}: no such folder"
    monkeypatch.delenv("CONSOLE_TOKEN", raising=False)
    assert main(["console", str(tmp_path), "--host", "0.0.0.0", "--token-env", "CONSOLE_TOKEN"]) == 2
    assert "CONSOLE_TOKEN is not set, and 0.0.0.0 is not loopback" in capsys.readouterr().err
    assert not (tmp_path / "console.db").exists()
