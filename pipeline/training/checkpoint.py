"""Epoch checkpoints without pickle: tensors in ``epoch-NNNN.safetensors``, everything else in ``epoch-NNNN.json``.

The tensors are the model state (``model.*``), the optimizer state (``optimizer.<param index>.<name>``) and the
random states (``rng.torch``, ``rng.sampler``); the JSON holds the epoch, step, optimizer hyper-parameters,
Python/NumPy random states, the training config, the metric history and the sha256 of the tensor file, so a
resumed run continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.fileio import atomic_write, file_sha256
from pipeline.training.errors import TrainingError

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
_PREFIX = "epoch-"


@dataclass
class Checkpoint:
    """What a checkpoint restores: ``epoch`` completed epochs, ``step`` optimizer steps, and the run's JSON state."""

    epoch: int
    step: int
    config: dict[str, Any]
    history: list[dict[str, Any]]
    elapsed: dict[str, float]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def checkpoint_paths(out: Path, epoch: int) -> tuple[Path, Path]:
    stem = out / CHECKPOINT_DIR / f"{_PREFIX}{epoch:04d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def latest_checkpoint(out: Path) -> Path | None:
    """The JSON file of the newest complete checkpoint under ``out/checkpoints``, or None."""
    found = sorted((out / CHECKPOINT_DIR).glob(f"{_PREFIX}*.json"))
    return found[-1] if found else None


def save_checkpoint(out: Path, *, epoch: int, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    sampler_rng: torch.Generator, config: dict[str, Any], history: list[dict[str, Any]],
                    elapsed: dict[str, float], keep: int) -> Path:
    """Write the checkpoint after ``epoch`` completed epochs (tensors first, JSON last); keep the newest ``keep``."""
    tensor_path, json_path = checkpoint_paths(out, epoch)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{key}": value.detach().contiguous() for key, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.sampler"] = sampler_rng.get_state()
    atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp))
    numpy_state = np.random.get_state()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "step": step,
        "tensors": tensor_path.name,
        "sha256": file_sha256(tensor_path),
        "param_groups": optimizer_state["param_groups"],
        "rng_python": _to_json(random.getstate()),
        "rng_numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "config": config,
        "history": history,
        "elapsed": elapsed,
    }
    text = json.dumps(meta, indent=1, allow_nan=True)
    atomic_write(json_path, text)
    for old in sorted((out / CHECKPOINT_DIR).glob(f"{_PREFIX}*.json"))[:-keep]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink()
    return json_path


def load_checkpoint(json_path: Path) -> Checkpoint:
    """Read and verify a checkpoint; one-line TrainingError if it is incomplete, altered or of another format."""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{json_path}: unreadable checkpoint ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{json_path}: not a clipwatch checkpoint of format {CHECKPOINT_FORMAT}")
    tensor_path = json_path.with_name(str(meta.get("tensors")))
    if not tensor_path.is_file() or file_sha256(tensor_path) != meta.get("sha256"):
        raise TrainingError(f"{tensor_path}: missing or does not match the sha256 in {json_path.name}")
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError) as exc:
        raise TrainingError(f"{tensor_path}: unreadable tensors ({exc})") from None
    return Checkpoint(epoch=int(meta["epoch"]), step=int(meta["step"]), config=meta["config"],
                      history=meta["history"], elapsed=meta["elapsed"], tensors=tensors, meta=meta)


def restore(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
            sampler_rng: torch.Generator) -> None:
    """Put the checkpoint's model, optimizer and random states back in place."""
    tensors = checkpoint.tensors
    model.load_state_dict({key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = [{**group, **({"betas": tuple(group["betas"])} if "betas" in group else {})}
              for group in checkpoint.meta["param_groups"]]
    if len(groups) != len(optimizer.param_groups):
        raise TrainingError(f"checkpoint of epoch {checkpoint.epoch} has {len(groups)} optimizer groups, this run "
                            f"{len(optimizer.param_groups)}: it was written with another backbone_lr_ratio; "
                            "resume with the same one or start a new run")
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    sampler_rng.set_state(tensors["rng.sampler"])
    random.setstate(_to_tuple(checkpoint.meta["rng_python"]))
    kind, keys, *rest = checkpoint.meta["rng_numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def _to_json(value: Any) -> Any:
    return [_to_json(item) for item in value] if isinstance(value, (tuple, list)) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(item) for item in value) if isinstance(value, list) else value
