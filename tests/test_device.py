"""The device option: names checked against this machine up front, one-line errors, and CPU runs unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from pipeline_helpers import write_config

from pipeline.cli import main
from pipeline.detect import Detector
from pipeline.errors import ClipwatchError
from pipeline.models import ModelError
from pipeline.models.device import resolve_device
from workers.__main__ import main as workers_main


def unavailable_cuda() -> str:
    """A CUDA device this machine cannot give: any at all without a GPU, else an index past the last one."""
    return "cuda:99" if torch.cuda.is_available() else "cuda"


def refused(name: str, **options) -> str:
    with pytest.raises(ModelError) as failure:
        resolve_device(name, **options)
    assert isinstance(failure.value, ClipwatchError)
    message = str(failure.value)
    assert "\n" not in message
    return message


def test_cpu_is_always_available():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_an_unavailable_cuda_device_is_refused_in_one_line():
    name = unavailable_cuda()
    message = refused(name)
    assert message.startswith(f"device {name}: ") and "CUDA" in message
    assert refused(name, source="--device").startswith(f"--device {name}: ")
    if not torch.cuda.is_available():
        assert "cuda:0" in refused("cuda:0") and "CUDA is not available" in refused("cuda:0")


def test_cuda_messages_say_why(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert refused("cuda") == (f"device cuda: CUDA is not available (this torch {torch.__version__} "
                               "has no CUDA support)")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert refused("cuda") == "device cuda: CUDA is not available (no CUDA device visible)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert refused("cuda:3").startswith("device cuda:3: only 1 CUDA device(s)")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_an_unavailable_mps_device_is_refused():
    assert "MPS is not available" in refused("mps")


@pytest.mark.parametrize("name", ["gpu0", "cuda:", "cuda:-1", "CUDA0", "", "cpu:0", "tpu"])
def test_malformed_names_are_refused(name):
    message = refused(name)
    assert "expected cpu, cuda, cuda:N or mps" in message


def test_the_detector_checks_the_device_before_reading_the_bundle(tmp_path):
    with pytest.raises(ModelError, match="CUDA"):
        Detector.load(tmp_path / "no-such-bundle", device=unavailable_cuda())


def command_args(name: str, tiny_model, tiny_bundle, tiny_dataset, out) -> list[str]:
    """Arguments that run ``name`` on the tiny fixtures (valid but for any device given after them)."""
    return {
        "fit": ["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out),
                "--layers", "layer4", "fc", "--no-progress"],
        "score": ["score", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--split", "test1",
                  "--out", str(out), "--no-progress"],
        "evaluate": ["evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--out", str(out),
                     "--surrogate", "none", "--no-progress"],
        "attack": ["attack", "--model", str(tiny_model), "--data", str(tiny_dataset), "--attack", "fgsm",
                   "--out", str(out / "fgsm.npz"), "--no-progress"],
    }[name]


@pytest.mark.parametrize("command", ["fit", "score", "evaluate", "attack"])
def test_commands_refuse_an_unavailable_device_at_once(command, tiny_model, tiny_bundle, tiny_dataset, tmp_path,
                                                         capsys, monkeypatch):
    def no_heavy_work(*args, **kwargs):
        raise AssertionError("the device must be checked before any model or video is loaded")

    first_work = {"fit": "load_model", "attack": "load_model", "score": "list_videos", "evaluate": "evaluate"}
    monkeypatch.setattr(f"pipeline.cli.{command}.{first_work[command]}", no_heavy_work)
    out = tmp_path / "out"
    name = unavailable_cuda()
    capsys.readouterr()
    assert main([*command_args(command, tiny_model, tiny_bundle, tiny_dataset, out), "--device", name]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipwatch {command}: error: --device {name}: ")
    assert "CUDA" in lines[0]
    assert not out.exists()


def test_a_malformed_device_option_exits_2(tiny_bundle, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["score", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--out", str(out),
                 "--device", "gpu0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["clipwatch score: error: --device gpu0: not a device; expected cpu, cuda, cuda:N or mps"]
    assert not out.exists()


def test_score_and_attack_run_on_an_explicit_cpu(tiny_model, tiny_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "scores"
    assert main([*command_args("score", tiny_model, tiny_bundle, tiny_dataset, out), "--device", "cpu"]) == 0
    assert json.loads((out / "summary.json").read_text())["clips"] > 0
    attacked = tmp_path / "attacked"
    assert main([*command_args("attack", tiny_model, tiny_bundle, tiny_dataset, attacked),
                 "--max-clips-per-video", "1", "--device", "cpu"]) == 0
    assert (attacked / "fgsm.npz").is_file()


def test_a_classifier_config_asking_for_unavailable_cuda_fails_at_start(tiny_bundle, tmp_path, capsys):
    name = unavailable_cuda()
    path = write_config(tmp_path / "gpu.yaml", {
        "sources": [{"path": "no-such-folder"}], "bundle": str(tiny_bundle), "classifier": {"device": name},
        "ops": {"base_port": 0, "log_level": "WARNING"}})
    capsys.readouterr()
    assert workers_main(["run", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipwatch run: error: classifier.device {name}: ")
    assert "CUDA" in lines[0]
