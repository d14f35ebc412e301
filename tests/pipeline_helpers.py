"""Helpers shared by the pipeline and worker tests: verdict messages, YAML configs, JSONL readers, waiting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from pipeline.bus import VerdictMessage


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
