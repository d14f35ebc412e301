"""Helpers shared by the pipeline and worker tests: verdict messages, YAML configs, JSONL readers, waiting."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import yaml

from pipeline.stream.messages import VerdictMessage

REPO = Path(__file__).resolve().parents[1]


def verdict(stream: str, seq: int, kind: str = "novel", **fields) -> VerdictMessage:
    values = dict(stream_id=stream, seq=seq, pts=[seq * 0.32, seq * 0.32 + 0.28], model_id="r3d-10@abc",
                  log_likelihoods={"fc": {"sep": -3.0 - seq}}, fused_score=-2.5, p_value=0.004 if kind != "normal"
                  else 0.6, verdict=kind, reasons=["fused likelihood p=0.0040 <= 0.01"] if kind != "normal" else [],
                  prediction=1, class_name="MoveRight", softmax_max=0.4,
                  thumbnail=cv2.imencode(".jpg", np.full((8, 8, 3), seq, np.uint8))[1].tobytes(),
                  timestamps={"decoder": 100.0 + seq, "density": 101.0 + seq})
    return VerdictMessage(**{**values, **fields})


def write_config(path: Path, data: dict) -> Path:
    """`data` as a YAML config file at `path`."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file ([] when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `condition()` until truthy; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


class WorkerProcess:
    """One `python -m workers worker NAME` process, restartable, with one log file per start."""

    def __init__(self, name: str, config: Path, logs: Path, env: dict[str, str]):
        self.name, self.config, self.logs, self.env = name, config, logs, env
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        self.starts += 1
        self.log = self.logs / f"{self.name}-{self.starts}.log"
        with open(self.log, "w") as stream:
            self.process = subprocess.Popen([sys.executable, "-m", "workers", "worker", self.name, "--config",
                                             str(self.config)], cwd=REPO, env=self.env, stdout=stream, stderr=stream)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def ops_port(self) -> int | None:
        """The ops port the worker logged (JSON logs), None before it did."""
        for line in self.log.read_text().splitlines():
            if line.startswith("{") and "ops_port" in line:
                return json.loads(line)["ops_port"]
        return None

    def ops(self, path: str) -> tuple[int, bytes]:
        """(status, body) of GET `path` on the worker's ops port."""
        port = wait_for(self.ops_port, 60, what=f"{self.name} ops port")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def healthz(self) -> dict:
        return json.loads(self.ops("/healthz")[1])


def first_test_clips(dataset, preprocessing, count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` real uint8 clips ``(N, T, S, S, 3)`` of a dataset's split-1 test videos (one per video), and
    their labels."""
    from pipeline.data import UCF101
    from pipeline.detect import load_clips

    videos = [(s.path, s.label) for s in UCF101(dataset, split=1, subset="test").samples]
    clips, labels, _, _ = load_clips(videos, preprocessing, max_clips_per_video=1, progress=False)
    return clips[:count], labels[:count]
