"""What a training run leaves behind besides the model: ``metrics.json`` and ``training_curve.png``."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from pipeline.training.evaluation import Evaluation  # noqa: E402

METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"


def evaluation_json(evaluation: Evaluation, classes: Sequence[str]) -> dict[str, Any]:
    return {
        "clip_accuracy": evaluation.clip_accuracy,
        "video_accuracy": evaluation.video_accuracy,
        "loss": evaluation.loss,
        "num_clips": evaluation.num_clips,
        "num_videos": evaluation.num_videos,
        "per_class_clip_accuracy": dict(zip(classes, evaluation.per_class_accuracy(), strict=True)),
        "confusion": evaluation.confusion.tolist(),
    }


def write_metrics(out: Path, metrics: dict[str, Any]) -> Path:
    path = out / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return path


def curve_title(model: str, options: Mapping[str, Any] | None = None, seed: int | None = None) -> str:
    """A readable title for a run: ``r3d-18 (width 16, zero init residual), seed 0``; a flag set to False reads
    ``no <flag>``."""
    words = []
    for key, value in (options or {}).items():
        name = str(key).replace("_", " ")
        words.append(name if value is True else f"no {name}" if value is False else f"{name} {value}")
    text = f"{model} ({', '.join(words)})" if words else str(model)
    return text if seed is None else f"{text}, seed {seed}"


def plot_curve(out: Path, history: Sequence[dict[str, Any]], title: str | Mapping[str, Any]) -> Path:
    """Loss and accuracy per epoch (training batches, and the validation or test clips the run watched) as a
    two-panel PNG. `title` is a string, or the run's ``{"model", "options", "seed"}`` (see `curve_title`)."""
    if isinstance(title, Mapping):
        title = curve_title(title["model"], title.get("options"), title.get("seed"))
    epochs = [row["epoch"] for row in history]
    watched = "val" if any(row.get("val_loss") is not None for row in history) else "test"
    name = "validation" if watched == "val" else "test"
    tested = [row for row in history if row.get(f"{watched}_loss") is not None]
    tested_epochs = [row["epoch"] for row in tested]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train (label-smoothed)")
    loss_axis.plot(tested_epochs, [row[f"{watched}_loss"] for row in tested], "o-", label=f"{name} clips")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy_axis.plot(epochs, [row["train_accuracy"] for row in history], label="train (augmented)")
    accuracy_axis.plot(tested_epochs, [row[f"{watched}_clip_accuracy"] for row in tested], "o-",
                       label=f"{name} clips")
    accuracy_axis.plot(tested_epochs, [row[f"{watched}_video_accuracy"] for row in tested], "o-",
                       label=f"{name} videos")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(textwrap.fill(title, 110))
    figure.tight_layout()
    path = out / CURVE_FILE
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
