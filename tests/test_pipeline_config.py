"""Pipeline configs: every section, environment interpolation, relative paths, and one-line errors naming the key."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pipeline_helpers import write_config

from pipeline.config import ConfigError, load_config
from workers.__main__ import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def base(tiny_bundle):
    return {"sources": [{"path": "videos"}], "bundle": str(tiny_bundle)}


def error_of(tmp_path, data, environ=None) -> str:
    path = write_config(tmp_path / "pipeline.yaml", data)
    with pytest.raises(ConfigError) as failure:
        load_config(path, environ=environ or {})
    message = str(failure.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_a_full_config_loads_with_environment_and_relative_paths(tmp_path, tiny_bundle):
    data = {
        "sources": [{"id": "lobby", "path": "videos/lobby.mp4", "loop": True, "pace": 1.0},
                    {"uri": "rtsp://cam:${CAM_PASSWORD}@10.0.0.7/stream", "stall_timeout_s": 3, "max_reconnects": 4},
                    {"webcam": 0, "stride": 4}],
        "bundle": str(tiny_bundle),
        "bus": {"url": "${REDIS_URL:-redis://127.0.0.1:6379/0}", "max_backlog": 128, "visibility_timeout_ms": 5000},
        "classifier": {"max_batch": 16, "max_wait_ms": 20, "threads": 2, "thumbnail_size": 0},
        "density": {"alpha": 0.05},
        "alerts": {"rules": {"kinds": {"novel": {"k": 2, "n": 3, "cooldown_s": 10}}},
                   "jsonl": "${OUT}/alerts.jsonl", "thumbnails_dir": "/var/thumbs",
                   "webhooks": {"urls": ["https://hooks.example/a"], "secret_env": "HOOK_SECRET",
                                "retry": {"max_attempts": 3}}},
        "ops": {"base_port": 9400, "ports": {"sink": "${SINK_PORT}"}, "log_format": "json"},
    }
    path = write_config(tmp_path / "pipeline.yaml", data)
    config = load_config(path, environ={"CAM_PASSWORD": "s3cret", "OUT": "out", "HOOK_SECRET": "k",
                                        "SINK_PORT": "9999"})
    assert config.sources[0].path == tmp_path / "videos" / "lobby.mp4"
    assert config.sources[0].is_live and config.sources[1].is_live
    assert config.sources[1].uri == "rtsp://cam:s3cret@10.0.0.7/stream"
    assert config.bus.url == "redis://127.0.0.1:6379/0"
    assert config.alerts.jsonl == tmp_path / "out" / "alerts.jsonl"
    assert config.alerts.thumbnails_dir == Path("/var/thumbs")
    assert config.alerts.rules.kinds["novel"].k == 2
    assert [config.ops.port_for(name) for name in ("decoder", "classifier", "density", "sink")] == \
        [9400, 9401, 9402, 9999]
    with pytest.raises(ConfigError, match=r"alerts\.webhooks\.secret_env: environment variable HOOK_SECRET"):
        config.webhook_config({})
    webhook = config.webhook_config({"HOOK_SECRET": "k"})
    assert webhook.secret.get_secret_value() == "k" and webhook.retry.max_attempts == 3
    assert webhook.ledger_path == tmp_path / "webhook-ledger.jsonl"


@pytest.mark.parametrize(("change", "expected"), [
    ({"sourcess": []}, "sourcess: unknown key (did you mean 'sources'?)"),
    ({"sources": [{"urii": "rtsp://a/b"}]}, "sources.0.urii: unknown key (did you mean 'uri'?)"),
    ({"alerts": {"rules": {"kinds": {"novel": {"kk": 2}}}}},
     "alerts.rules.kinds.novel.kk: unknown key (did you mean 'k'?)"),
    ({"alerts": {"webhooks": {"urls": ["http://h/x"], "secret": "inline"}}},
     "alerts.webhooks.secret: unknown key (did you mean 'secret_env'?)"),
    ({"sources": [{"uri": "ftp://cam/stream"}]}, "sources.0.uri: unsupported scheme 'ftp'"),
    ({"bus": {"url": "amqp://broker"}}, "bus.url: unsupported bus scheme 'amqp'"),
    ({"classifier": {"max_batch": 0}}, "classifier.max_batch: Input should be greater than or equal to 1"),
    ({"density": {"alpha": 1.5}}, "density.alpha: Input should be less than 1"),
    ({"sources": [{"path": "a.mp4", "uri": "rtsp://a/b"}]}, "sources.0: give exactly one of path, uri, webcam"),
    ({"sources": [{"uri": "udp://127.0.0.1:5000", "loop": True}]}, "sources.0: loop and pace apply to path sources"),
    ({"sources": [{"id": "a", "webcam": 0}, {"id": "a", "webcam": 1}]}, "sources: stream ids must be unique, repeated: a"),
    ({"alerts": {"rules": {"kinds": {"novle": {"k": 2, "n": 3}}}}},
     "alerts.rules: kinds.novle: not a verdict the detector gives (did you mean 'novel'?); alert kinds are novel, "
     "adversarial, and a misspelt one would never alert"),
    ({"alerts": {"webhooks": {"urls": ["ftp://h/x"]}}},
     "alerts.webhooks.urls: ftp://h/x: webhook URL must be http(s)://host/..."),
    ({"ops": {"log_format": "xml"}}, "ops.log_format: Input should be 'text' or 'json'"),
    ({"bus": {"url": "${REDIS_URL}"}}, "bus.url: environment variable REDIS_URL is not set"),
])
def test_a_bad_config_fails_with_one_line_naming_the_key(tmp_path, base, change, expected):
    assert error_of(tmp_path, {**base, **change}).startswith(expected)


def test_environment_references_are_read_field_by_field(tmp_path, base):
    data = {**base, "sources": [{"path": "${VIDEOS}/lobby.mp4", "id": "${CAMERA:-lobby}"},
                                {"uri": "rtsp://${CAM_HOST}/live", "options": {"rtsp_transport": "${TRANSPORT:-tcp}"}}],
            "alerts": {"jsonl": "${OUT:-runs}/alerts.jsonl",
                       "webhooks": {"urls": ["https://${HOOK_HOST}/a"], "ledger": "${STATE}/ledger.jsonl"}},
            "ops": {"host": "${OPS_HOST}", "log_level": "${LOG_LEVEL:-INFO}", "base_port": "${OPS_PORT}"},
            "classifier": {"max_batch": "${BATCH:-4}", "threads": "${THREADS:-2}"}}
    data["alerts"]["rules"] = {"kinds": {"novel": {"k": "${NOVEL_K:-2}", "n": 3}}}
    injected = "x: [1, {a: b}]\nbundle: /etc"
    environ = {"VIDEOS": "feeds", "CAMERA": "", "CAM_HOST": "10.0.0.7", "OUT": "", "HOOK_HOST": "hooks.example",
               "STATE": "/var/state", "OPS_HOST": injected, "LOG_LEVEL": "DEBUG", "OPS_PORT": "9100", "BATCH": "16"}
    config = load_config(write_config(tmp_path / "pipeline.yaml", data), environ=environ)
    lobby, camera = config.sources
    assert lobby.path == tmp_path / "feeds" / "lobby.mp4" and lobby.id == "lobby"  # empty: the default applies
    assert camera.uri == "rtsp://10.0.0.7/live" and camera.options == {"rtsp_transport": "tcp"}
    assert config.alerts.jsonl == tmp_path / "runs" / "alerts.jsonl"
    assert config.alerts.webhooks.urls == ["https://hooks.example/a"]
    assert config.alerts.webhooks.ledger == Path("/var/state/ledger.jsonl")
    assert config.ops.host == injected and config.ops.log_level == "DEBUG"  # a value stays a value, never YAML
    assert (config.ops.base_port, config.classifier.max_batch, config.classifier.threads) == (9100, 16, 2)
    assert config.alerts.rules.kinds["novel"].k == 2  # other packages' models read the environment too


@pytest.mark.parametrize(("change", "expected"), [
    ({"sources": [{"path": "${VIDEOS}/a.mp4"}]}, "sources.0.path: environment variable VIDEOS is not set"),
    ({"sources": [{"uri": "rtsp://h/x", "options": {"rtsp_transport": "${TRANSPORT}"}}]},
     "sources.0.options.rtsp_transport: environment variable TRANSPORT is not set"),
    ({"alerts": {"webhooks": {"urls": ["https://h/a", "${HOOK_URL}"]}}},
     "alerts.webhooks.urls.1: environment variable HOOK_URL is not set"),
    ({"ops": {"host": "${OPS_HOST}"}}, "ops.host: environment variable OPS_HOST is not set"),
    ({"bus": {"max_backlog": "${BACKLOG}"}}, "bus.max_backlog: environment variable BACKLOG is not set"),
    ({"bus": {"max_backlog": "${BACKLOG:-many}"}}, "bus.max_backlog: Input should be a valid integer, unable to "
                                                    "parse string as an integer"),
    ({"bundle": "${CLIPWATCH_BUNDLE}"}, "bundle: environment variable CLIPWATCH_BUNDLE is not set"),
])
def test_an_unset_variable_fails_naming_the_key_and_the_variable(tmp_path, base, change, expected):
    assert error_of(tmp_path, {**base, **change}) == expected


def test_bundle_must_be_a_bundle_directory(tmp_path, base):
    assert error_of(tmp_path, {**base, "bundle": "missing"}).startswith(f"bundle: {tmp_path / 'missing'}: no such")
    (tmp_path / "empty").mkdir()
    assert "not a detector bundle (no bundle.json" in error_of(tmp_path, {**base, "bundle": "empty"})
    assert error_of(tmp_path, {"sources": []}) == "bundle: required key is missing"


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config: No such file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources:\n  - path: a\n bundle: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+: invalid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a config must be a mapping of sections, got list"):
        load_config(listed)


def test_sources_whose_stream_ids_could_clash_are_refused_naming_both(tmp_path, base):
    for name in ("a/cam.mp4", "b/cam.mp4", "site1/feeds/x.mp4", "site2/feeds/x.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"video")
    same_name = error_of(tmp_path, {**base, "sources": [{"path": "a/cam.mp4"}, {"path": "b/cam.mp4"}]})
    assert same_name == (f"sources.0 ({tmp_path / 'a/cam.mp4'}, stream id 'cam') and sources.1 "
                         f"({tmp_path / 'b/cam.mp4'}, stream id 'cam') would give clips the same keys; "
                         "set a distinct `id` on one of them")
    folders = error_of(tmp_path, {**base, "sources": [{"path": "site1/feeds"}, {"path": "site2/feeds"}]})
    assert "sources.0 (" in folders and "sources.1 (" in folders and "stream id 'feeds')" in folders
    nested = error_of(tmp_path, {**base, "sources": [{"path": "site1/feeds"}, {"id": "feeds/x", "webcam": 0}]})
    assert "stream id 'feeds') and sources.1 (camera 0, stream id 'feeds/x')" in nested
    config = load_config(write_config(tmp_path / "ok.yaml", {**base, "sources": [
        {"path": "a/cam.mp4", "id": "door"}, {"path": "b/cam.mp4"}, {"path": "site1/feeds", "id": "one"},
        {"path": "site2/feeds"}, {"id": "feeds-x", "webcam": 0}]}))
    assert [source.stream_id for source in config.sources] == ["door", "cam", "one", "feeds", "feeds-x"]


def test_the_shipped_configs_load(tiny_bundle):
    environ = {"CLIPWATCH_BUNDLE": str(tiny_bundle)}
    local = load_config(REPO / "configs" / "local.yaml", environ=environ)
    assert local.bus.url == "memory://" and local.bundle == tiny_bundle
    redis = load_config(REPO / "configs" / "redis.yaml", environ={**environ, "REDIS_URL": "redis://cache:6380/1"})
    assert redis.bus.url == "redis://cache:6380/1" and redis.ops.port_for("density") == 9402
    assert redis.alerts.jsonl == REPO / "runs" / "redis" / "alerts.jsonl"


def test_the_commands_print_one_error_line_and_exit_2(tmp_path, base, capsys):
    path = write_config(tmp_path / "typo.yaml", {**base, "classifer": {"max_batch": 4}})
    assert main(["run", "--config", str(path)]) == 2
    assert main(["worker", "density", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"clipwatch run: error: {path}: classifer: unknown key (did you mean 'classifier'?)",
                     f"clipwatch worker: error: {path}: classifer: unknown key (did you mean 'classifier'?)"]


def test_multi_stage_commands_ask_openmp_to_wait_passively_before_torch_loads(tmp_path):
    probe = textwrap.dedent("""
        import os, sys
        import pipeline.cli as cli
        cli.yield_idle_cores(["train", "data"])
        print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
        build_parser = cli.build_parser
        def spy(command=None, listing=False):  # the parser imports the command's module, which may import torch
            print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
            return build_parser(command, listing=listing)
        cli.build_parser = spy
        cli.main(["-v", "run", "--config", "missing.yaml"])  # fails on the missing config
        print("torch" in sys.modules)  # only the run command was loaded, and a bad config fails before torch
    """)
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def run(env):
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        return out.stdout.split(), out.stderr

    lines, errors = run(environ)
    assert lines == ["None", "False", "PASSIVE", "False", "False"], errors
    lines, errors = run({**environ, "OMP_WAIT_POLICY": "ACTIVE"})
    assert lines == ["ACTIVE", "False", "ACTIVE", "False", "False"], errors


def test_the_classifier_makes_thumbnails_only_when_the_sink_keeps_them(tmp_path, caplog):
    """Without alerts.thumbnails_dir nothing keeps a thumbnail, so the classifier makes none and never runs the shipped
    bundle's heatmap decoder, which only colours them."""
    import numpy as np

    from pipeline.config import parse_config
    from pipeline.demo import DEFAULT_BUNDLE
    from pipeline.stream.messages import ClipMessage
    from workers.ops.metrics import PipelineMetrics
    from workers.stages import build_stages

    frames = np.random.default_rng(0).integers(0, 256, (16, 90, 120, 3), dtype=np.uint8)
    clip = ClipMessage.from_array(frames, stream_id="cam", seq=0, first_frame=0, last_frame=15,
                                  pts=[i / 25 for i in range(16)])
    made = {}
    for name, alerts in (("kept", {"thumbnails_dir": "thumbs"}), ("unkept", {})):
        config = parse_config({"bundle": str(DEFAULT_BUNDLE), "alerts": {"print": False, **alerts}}, base=tmp_path)
        assert config.classifier.thumbnail_size == 160
        with caplog.at_level(logging.INFO, logger="workers.stages"):
            [stage] = build_stages("classifier", config, PipelineMetrics())
        step = stage.run_step
        assert step.evidence.heatmap is not None  # the shipped bundle has a decoder
        if name == "unkept":
            step.evidence.heatmap.decode_tensor = None  # calling the decoder would fail
        made[name] = step([clip])[0]
    assert made["kept"].thumbnail.startswith(b"\xff\xd8\xff") and made["unkept"].thumbnail is None
    assert made["kept"].prediction == made["unkept"].prediction
    assert "no thumbnails (alerts.thumbnails_dir is unset" in caplog.text
