"""``clipwatch alerts replay``: dead-lettered webhook deliveries re-sent, signed, once, against a real receiver."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_helpers import write_config
from webhook_server import Reply, WebhookServer

from pipeline.alerts import Alert, ScoredClip, WebhookSink
from pipeline.alerts.signing import IDEMPOTENCY_HEADER
from pipeline.cli import main
from pipeline.config import load_config

SECRET = "replay-secret"
BUNDLE = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "bundles" / "default"


def alert(seq: int) -> Alert:
    clip = ScoredClip(stream_id="cam", seq=seq, verdict="novel", fused_score=3.0, p_value=0.001,
                      clip_start=float(seq), clip_end=seq + 1.0, scored_at=1_700_000_000.0 + seq)
    return Alert.from_clip(clip, "novel")


def pipeline_config(tmp_path, url: str) -> Path:
    return write_config(tmp_path / "pipeline.yaml", {
        "bundle": str(BUNDLE),
        "alerts": {"jsonl": "alerts.jsonl", "webhooks": {
            "urls": [url], "secret_env": "REPLAY_TEST_SECRET", "ledger": "state/ledger.jsonl",
            "dead_letters": "state/dead.jsonl", "timeout_s": 1.0, "retry": {"max_attempts": 1}}},
    })


def replay(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["alerts", "replay", *args])
    return code, capsys.readouterr().out.splitlines()


def test_replay_resends_dead_letters_signed_once_each_and_records_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REPLAY_TEST_SECRET", SECRET)
    alerts = [alert(seq) for seq in range(3)]
    with WebhookServer(secret=SECRET) as server:
        config = pipeline_config(tmp_path, server.url)
        server.default = Reply.fail(503)
        with WebhookSink(load_config(config).webhook_config()) as sink:  # the receiver is down: all dead-lettered
            assert all(sink.submit(a) for a in alerts) and sink.flush(timeout=5)
        assert sink.stats.dead_lettered == 3

        code, lines = replay(capsys, "--config", str(config), "--key", "cam:1:novel")
        assert code == 1 and lines[0].startswith("failed cam:1:novel") and "HTTP 503" in lines[0]
        assert lines[-1] == "replay: 0 delivered, 0 already delivered, 1 failed"

        server.default = Reply.accept()
        code, lines = replay(capsys, "--config", str(config), "--key", "cam:1:novel", "--key", "cam:9:novel")
        assert code == 1 and lines[0] == "failed cam:9:novel: not in the dead-letter file"
        assert lines[1] == f"delivered cam:1:novel {server.url}: HTTP 200 OK"
        code, lines = replay(capsys, "--config", str(config), "--all")
        assert code == 0 and lines[-1] == "replay: 2 delivered, 1 already delivered, 0 failed"
        code, lines = replay(capsys, "--config", str(config), "--all")
        assert code == 0 and lines[-1] == "replay: 0 delivered, 3 already delivered, 0 failed"
        accepted = server.accepted()
    assert sorted(r.header(IDEMPOTENCY_HEADER) for r in accepted) == [a.idempotency_key for a in alerts]
    bodies = {a.idempotency_key: a.to_json_bytes() for a in alerts}
    assert all(r.signature_valid and r.body == bodies[r.header(IDEMPOTENCY_HEADER)] for r in accepted)
    WebhookSink(load_config(config).webhook_config()).close()  # reopening compacts the ledger
    ledger = [json.loads(line) for line in (tmp_path / "state" / "ledger.jsonl").read_text().splitlines()]
    assert sorted((r["op"], r["key"]) for r in ledger) == [("delivered", a.idempotency_key) for a in alerts]


def test_replay_refuses_to_run_beside_a_sink_holding_the_ledger(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REPLAY_TEST_SECRET", SECRET)
    config = pipeline_config(tmp_path, "http://127.0.0.1:9/hook")
    with WebhookSink(load_config(config).webhook_config()):
        code = main(["alerts", "replay", "--config", str(config), "--all"])
    error = capsys.readouterr().err
    assert code == 2 and "ledger.jsonl.lock: the webhook ledger is in use by another process" in error
