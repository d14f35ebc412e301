"""`clipwatch run`: the four stages in one process on real video files, a corrupt file and an unreachable stream."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import read_jsonl, wait_for, write_config
from redis_server import free_port

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.detect import Detector, extract_video_features
from pipeline.video import ClipSplitter, iter_file_clips
from workers.launch import run_pipeline

REPO = Path(__file__).resolve().parents[1]
RULES = {"kinds": {"novel": {"k": 1, "n": 1}, "adversarial": {"k": 1, "n": 1}}}


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tmp_path_factory):
    """A directory with two good videos and a corrupt one, and a third good video on its own."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "cams").mkdir()
    shutil.copy(sorted((tiny_dataset / "Grow").glob("*.avi"))[0], root / "cams" / "grow.avi")
    shutil.copy(sorted((tiny_dataset / "novel" / "Orbit").glob("*.avi"))[0], root / "cams" / "orbit.avi")
    (root / "cams" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    shutil.copy(sorted((tiny_dataset / "MoveLeft").glob("*.avi"))[0], root / "left.avi")
    return root


def offline_verdicts(bundle_dir, videos: dict[str, Path], alpha: float) -> dict[str, tuple[float, str]]:
    """{clip key: (fused score, verdict)} computed in one batch pass, as `clipwatch score` would."""
    detector = Detector.load(bundle_dir, alpha=alpha)
    names = list(videos)
    features = extract_video_features(detector.model, detector.manifest.preprocessing, [(videos[n], 0) for n in names],
                                      detector.layers, pool_factor=detector.settings.pool_factor, progress=False,
                                      evidence=detector.evidence)
    scores = detector.score_features(features.layers, features.softmax, evidence=features.evidence)
    name_of = {str(path): name for name, path in videos.items()}
    keys = [f"{name_of[path]}:{seq}" for path, seq in zip(features.videos, features.seqs, strict=True)]
    return {key: (float(scores.fused[i]), scores.verdicts[i]) for i, key in enumerate(keys)}


def test_run_scores_every_clip_once_and_alerts_on_the_flagged_ones(inputs, tiny_bundle, tmp_path, caplog):
    closed_port = free_port()
    path = write_config(tmp_path / "local.yaml", {
        "sources": [{"path": str(inputs / "cams")}, {"id": "left", "path": str(inputs / "left.avi")},
                    {"id": "gate", "uri": f"rtsp://127.0.0.1:{closed_port}/stream", "open_timeout_s": 1,
                     "max_reconnects": 1, "backoff_initial_s": 0.1, "backoff_max_s": 0.2}],
        "bundle": str(tiny_bundle),
        "classifier": {"max_batch": 4, "max_wait_ms": 20},
        "density": {"alpha": 0.5},
        "alerts": {"rules": RULES, "jsonl": "out/alerts.jsonl", "verdicts_jsonl": "out/verdicts.jsonl",
                   "health_jsonl": "out/health.jsonl", "thumbnails_dir": "out/thumbs"},
    })
    out, progress = io.StringIO(), io.StringIO()
    with caplog.at_level(logging.INFO):
        summary = run_pipeline(load_config(path), out=out, drain_timeout_s=60, progress=progress, progress_s=0.2)
    lines = progress.getvalue().splitlines()
    assert lines and all(line.startswith("run: ") and "clips decoded" in line for line in lines)

    videos = {"cams/grow": inputs / "cams" / "grow.avi", "cams/orbit": inputs / "cams" / "orbit.avi",
              "left": inputs / "left.avi"}
    expected = {f"{name}:{clip.seq}" for name, video in videos.items()
                for clip in iter_file_clips(video, ClipSplitter(8, 8))}
    assert summary.published == {name: 3 for name in videos} and not summary.stopped
    verdicts = read_jsonl(tmp_path / "out" / "verdicts.jsonl")
    counts = Counter(record["clip_key"] for record in verdicts)
    assert set(counts) == expected and set(counts.values()) == {1}

    offline = offline_verdicts(tiny_bundle, videos, alpha=0.5)
    for record in verdicts:
        fused, verdict = offline[record["clip_key"]]
        assert record["fused_score"] == pytest.approx(fused, rel=1e-4, abs=1e-5)
        assert record["verdict"] == verdict
    flagged = {f"{r['clip_key']}:{r['verdict']}" for r in verdicts if r["verdict"] != "normal"}
    assert flagged, "alpha 0.5 flags about half the clips"

    alerts = read_jsonl(tmp_path / "out" / "alerts.jsonl")
    assert {a["idempotency_key"] for a in alerts} == flagged and len(alerts) == len(flagged)
    assert all(Path(a["thumbnail"]["uri"]).is_file() for a in alerts)
    printed = [line for line in out.getvalue().splitlines() if line.startswith("ALERT ")]
    assert len(printed) == summary.alerts == len(alerts)

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "corrupt.mp4" in errors[0] and "\n" not in errors[0]
    assert summary.skipped == [errors[0].removeprefix("decoder: skipping ")]
    health = read_jsonl(tmp_path / "out" / "health.jsonl")
    gate = [event["state"] for event in health if event["stream_id"] == "gate"]
    assert "reconnecting" in gate and gate[-1] == "ended"
    assert any("gave up after 1 reconnect" in e["detail"] for e in health if e["stream_id"] == "gate")
    assert [e["state"] for e in health if e["stream_id"] == "left"] == ["up", "ended"]
    assert [e["state"] for e in health if e["stream_id"] == "cams/corrupt"] == ["down"]

    again = run_pipeline(load_config(path), out=io.StringIO(), drain_timeout_s=60)
    assert again.alerts == 0 and len(read_jsonl(tmp_path / "out" / "verdicts.jsonl")) == len(expected)


def test_run_command_exits_non_zero_when_no_source_could_be_opened(tiny_bundle, tmp_path, capsys):
    path = write_config(tmp_path / "missing.yaml", {
        "sources": [{"path": "no-such-folder"}], "bundle": str(tiny_bundle), "alerts": {"jsonl": "alerts.jsonl"},
        "ops": {"base_port": 0, "log_level": "WARNING"}})
    assert main(["run", "--config", str(path), "--drain-timeout", "30"]) == 1
    captured = capsys.readouterr()
    assert "0 clips from 0 streams" in captured.out and "1 inputs skipped" in captured.out
    assert captured.err.strip().endswith("clipwatch run: error: no source could be opened (1 skipped; see above)")


def test_run_command_serves_ops_and_stops_gracefully_on_sigterm(inputs, tiny_bundle, tmp_path):
    path = write_config(tmp_path / "live.yaml", {
        "sources": [{"id": "replay", "path": str(inputs / "left.avi"), "loop": True, "pace": 2.0}],
        "bundle": str(tiny_bundle),
        "alerts": {"rules": RULES, "jsonl": "alerts.jsonl", "verdicts_jsonl": "verdicts.jsonl"},
        "ops": {"log_format": "json"},
    })
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "workers", "run", "--config", str(path)], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        port = wait_for(lambda: next((json.loads(line).get("ops_port") for line in log.read_text().splitlines()
                                      if '"ops_port"' in line), None), 60, what="ops port in the JSON log")
        wait_for(lambda: len(read_jsonl(tmp_path / "verdicts.jsonl")) >= 4, 60, what="4 verdicts")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            health = json.load(response)
        assert health["status"] == "ok" and health["components"]["decoder"] == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'clipwatch_clips_published_total{stream="replay"}' in metrics
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert stdout.strip().splitlines()[-1].startswith("run stopped: ")
    seqs = [record["seq"] for record in read_jsonl(tmp_path / "verdicts.jsonl")]
    assert len(seqs) == len(set(seqs)) >= 4 and min(seqs) > 10**12  # looped files count from the time in ms
    assert np.all(np.diff(sorted(seqs)) == 1)
    assert "SIGTERM: finishing the batch in flight" in log.read_text()


def test_run_learns_a_cameras_normal_and_flags_its_covered_lens(tiny_bundle, tmp_path):
    from videos import write_frames

    from pipeline.data.cameras import camera_scenario

    camera = next(camera_scenario(2, cameras=1, warmup=24, test=1, frames=24, width=64, height=48,
                                  tampering=("covered",)))
    lobby = tmp_path / "lobby"
    lobby.mkdir()
    for index, clip in enumerate(camera.sets["warmup"]):  # one fixed scene, its usual activities
        write_frames(lobby / f"a{index:02d}.mp4", clip, 64, 48)
    write_frames(lobby / "zz-covered.mp4", camera.sets["tamper_covered"][0], 64, 48)  # something over the lens
    path = write_config(tmp_path / "local.yaml", {
        "sources": [{"id": "lobby", "path": str(lobby), "normal": {"views": ["scene"]}}],
        "bundle": str(tiny_bundle),
        "decoder": {"threads": 1},
        "classifier": {"max_batch": 4, "max_wait_ms": 20},
        "camera_normal": {"enabled": True, "warmup_clips": 48, "memory_clips": 128, "refit_every": 8},
        "alerts": {"rules": RULES, "jsonl": "out/alerts.jsonl", "verdicts_jsonl": "out/verdicts.jsonl",
                   "health_jsonl": "out/health.jsonl", "thumbnails_dir": "out/thumbs"},
    })
    summary = run_pipeline(load_config(path), out=io.StringIO(), drain_timeout_s=60)
    assert sum(summary.published.values()) == 75
    verdicts = {record["clip_key"]: record for record in read_jsonl(tmp_path / "out" / "verdicts.jsonl")}
    assert len(verdicts) == 75
    judged = [record for record in verdicts.values() if "camera_p_values" in record]
    assert 20 <= len(judged) <= 75 - 48, "the first 48 normal clips warm the camera up"
    assert all(set(record["camera_p_values"]) == {"scene", "camera"} for record in judged)
    covered = sorted((record for key, record in verdicts.items() if key.startswith("lobby/zz-covered:")),
                     key=lambda record: record["seq"])
    assert len(covered) == 3
    for record in covered[1:]:  # the lens is covered from a frame in the first clip's first half
        assert record["verdict"] == "adversarial" and record["camera_p_values"]["scene"] < 1e-4
        assert any("unlike camera lobby's own" in reason for reason in record["reasons"])
    usual = [record for record in judged if not record["clip_key"].startswith("lobby/zz")]
    assert sum(record["camera_p_values"]["camera"] <= 0.005 for record in usual) <= 1
