"""``train(config)``: decode once, train on augmented cached clips, checkpoint every epoch, evaluate, save the model.

The run is a pure function of its config: every random draw comes from the seeded global torch generator (model
initialisation) or from one seeded ``torch.Generator`` (clip order, starts, crops, jitter), and both are saved in
each checkpoint, so ``train(config, resume=True)`` after an interruption ends with the same weights as a run that
was never interrupted (same thread count).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.data import UCF101
from pipeline.models import build_model, save_model
from pipeline.models.device import resolve_device
from pipeline.models.manifest import MANIFEST_FILE, WEIGHTS_FILE
from pipeline.training.augment import ClipSampler
from pipeline.training.cache import ClipCache, SkippedVideo
from pipeline.training.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint, restore, save_checkpoint
from pipeline.training.config import TrainConfig
from pipeline.training.errors import TrainingError
from pipeline.training.evaluation import Evaluation, evaluate
from pipeline.training.factors import FactorLoss
from pipeline.training.init import motion_energy_init
from pipeline.training.openset import PenultimateFeatures, make_outliers, objectosphere_loss
from pipeline.training.optim import frozen_modules, learning_rate, make_optimizer, set_bn_momentum
from pipeline.training.report import CURVE_FILE, METRICS_FILE, evaluation_json, plot_curve, write_metrics
from pipeline.training.transfer import SCRATCH, head_name, input_change, read_init, transfer_weights
from pipeline.training.validation import Best as _Best
from pipeline.training.validation import validation_split

log = logging.getLogger(__name__)

RUN_FILES = (MANIFEST_FILE, WEIGHTS_FILE, METRICS_FILE, CURVE_FILE, CHECKPOINT_DIR)


@dataclass(frozen=True)
class TrainReport:
    """Outcome of :func:`train`: where the model is, its test accuracies, epochs, wall time and skipped videos."""

    out: Path
    clip_accuracy: float
    video_accuracy: float
    epochs: int
    seconds: float
    resumed_from_epoch: int | None
    metrics: dict[str, Any]
    skipped: list[SkippedVideo] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, *, progress: bool = True, resume: bool = False) -> TrainReport:
    """Train ``config.model`` on split ``config.split`` of ``config.data`` and save it in ``config.out``.

    Starts from ``config.init`` (head re-initialised; see ``training.transfer``). With ``val_fraction``, every
    evaluation is on the validation groups, the best epoch's weights are the ones saved, ``patience`` stops the run
    early, and the test list is evaluated once at the end; without it, the test list is reported as the run goes.
    Writes ``model.safetensors`` + ``model.json`` (``load_model(config.out)`` reads them), ``metrics.json``,
    ``training_curve.png`` and ``checkpoints/``. With ``resume``, continues from the newest checkpoint, whose
    config must match ``config`` (threads and other bookkeeping fields aside). Raises a one-line
    :class:`TrainingError` (or another `ClipwatchError` of the dataset, model registry or device).
    """
    started = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    train_set = UCF101(config.data, split=config.split, subset="train")
    test_set = UCF101(config.data, split=config.split, subset="test")
    classes = train_set.classes
    train_samples, val_samples = validation_split(train_set.samples, config.val_fraction, config.seed)
    seed_everything(config.seed)
    model = _build_model(config, len(classes))
    checkpoint = _prepare_output(config, resume)
    if checkpoint is None and config.init != SCRATCH:
        init = read_init(config.init)
        log.info("init: %s", transfer_weights(model, init))
        change = input_change(init, config.to_json())
        if change:
            log.info("init: %s", change)
    model.to(device)

    decode_started = time.perf_counter()
    train_cache = ClipCache.build(train_samples, config.short_side, config.span, desc="decode train",
                                  progress=progress)
    val_cache = ClipCache.build(val_samples, config.short_side, config.span, desc="decode validation",
                                progress=progress) if val_samples else None
    test_cache = ClipCache.build(test_set.samples, config.short_side, config.span, desc="decode test",
                                 progress=progress)
    decode_seconds = time.perf_counter() - decode_started
    _check_caches(config, train_cache, test_cache, val_cache)
    skipped = train_cache.skipped + (val_cache.skipped if val_cache is not None else []) + test_cache.skipped
    if val_cache is not None and len(val_cache) == 0:
        log.warning("no usable validation video (%d skipped): the run is not early-stopped", len(val_cache.skipped))
        val_cache = None
    loop = _Loop(config, model, ClipSampler(train_cache, config, classes), progress, FactorLoss(config.factors, classes))
    best = _Best(config.out, model)

    history: list[dict[str, Any]] = []
    elapsed = {"decode": 0.0, "train": 0.0, "eval": 0.0, "total": 0.0}
    first_epoch = 0
    if checkpoint is not None:
        try:
            restore(checkpoint, model, loop.optimizer, loop.rng)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise TrainingError(f"{config.out}: checkpoint does not fit this model ({str(exc).splitlines()[0]})") \
                from None
        first_epoch, loop.step, history, elapsed = checkpoint.epoch, checkpoint.step, checkpoint.history, \
            checkpoint.elapsed
        loop.xi = next((row["objectosphere_xi"] for row in reversed(history) if "objectosphere_xi" in row), loop.xi)
    elapsed["decode"] += decode_seconds
    session_base = elapsed["total"]

    watched = "val" if val_cache is not None else "test"
    evaluation: Evaluation | None = None
    try:
        epoch = first_epoch
        while epoch < config.epochs and not best.exhausted(history, config.patience):
            epoch_started = time.perf_counter()
            row = loop.run_epoch(epoch)
            train_seconds = time.perf_counter() - epoch_started
            last = epoch + 1 == config.epochs
            evaluation = evaluate(model, val_cache or test_cache, config, len(classes)) \
                if last or (epoch + 1) % config.eval_every == 0 else None
            eval_seconds = time.perf_counter() - epoch_started - train_seconds
            loop.show(evaluation, watched)
            elapsed["train"] += train_seconds
            elapsed["eval"] += eval_seconds
            elapsed["total"] = session_base + time.perf_counter() - started
            scores = {f"{watched}_loss": None, f"{watched}_clip_accuracy": None, f"{watched}_video_accuracy": None}
            if evaluation is not None:
                scores = {f"{watched}_loss": evaluation.loss, f"{watched}_clip_accuracy": evaluation.clip_accuracy,
                          f"{watched}_video_accuracy": evaluation.video_accuracy}
                if val_cache is not None:
                    best.offer(epoch + 1, evaluation.clip_accuracy)
            history.append({**row, **scores, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                            "elapsed_seconds": elapsed["total"]})
            save_checkpoint(config.out, epoch=epoch + 1, step=loop.step, model=model, optimizer=loop.optimizer,
                            sampler_rng=loop.rng, config=config.to_json(), history=history, elapsed=elapsed,
                            keep=config.keep_checkpoints)
            epoch += 1
    finally:
        if loop.penultimate is not None:  # the open-set hook leaves the model whatever happened
            loop.penultimate.close()
    if val_cache is not None:
        best.restore()
    if evaluation is None or val_cache is not None:
        evaluation = evaluate(model, test_cache, config, len(classes))
    elapsed["total"] = session_base + time.perf_counter() - started
    metrics = _metrics(config, classes, model, evaluation, history, elapsed, train_cache, test_cache, skipped)
    metrics.update({"epochs_run": epoch, "best_epoch": best.epoch, "validation_videos": len(val_samples),
                    "device": str(device)})
    save_model(model.eval().cpu(), config.out, architecture=config.model, options=config.model_options,
               num_classes=len(classes), class_names=classes, preprocessing=config.preprocessing(),
               extra={"training": metrics_summary(metrics)})
    metrics["weights_bytes"] = (config.out / WEIGHTS_FILE).stat().st_size
    write_metrics(config.out, metrics)
    plot_curve(config.out, history, {"model": config.model, "options": config.model_options, "seed": config.seed})
    return TrainReport(out=config.out, clip_accuracy=evaluation.clip_accuracy,
                       video_accuracy=evaluation.video_accuracy, epochs=epoch, seconds=elapsed["total"],
                       resumed_from_epoch=None if checkpoint is None else checkpoint.epoch, metrics=metrics,
                       skipped=skipped)


class _Loop:
    """The optimisation state of a run (optimizer, sampler generator, step) and one epoch of it."""

    def __init__(self, config: TrainConfig, model: torch.nn.Module, sampler: ClipSampler, progress: bool,
                 factor_loss: FactorLoss) -> None:
        self.config, self.model, self.sampler, self.progress = config, model, sampler, progress
        self.factor_loss = factor_loss
        self.device = next(model.parameters()).device
        self.optimizer = make_optimizer(model, config)
        self.frozen_norms = _frozen_norms(model, config)
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.videos = len(sampler.cache)
        self.draws_per_batch = config.batch_size // 2 if config.paired_symmetries else config.batch_size
        self.steps_per_epoch = self.videos * config.clips_per_video // self.draws_per_batch
        if self.steps_per_epoch == 0:
            raise TrainingError(f"{config.data}: {self.videos} training videos x {config.clips_per_video} clips "
                                f"do not fill one batch of {config.batch_size}")
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self._bar: tqdm | None = None
        self._postfix: dict[str, str] = {}
        self.xi = config.objectosphere_xi
        self.penultimate = PenultimateFeatures(model.get_submodule(head_name(model))) \
            if config.outliers != "none" else None

    def _openset_step(self, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the known clips and the open-set loss of them with outliers made from them (training.openset)."""
        config, count = self.config, max(1, round(self.config.outlier_fraction * len(labels)))
        outliers = make_outliers(clips, labels, count, self.rng)
        known = torch.cat([torch.ones(len(labels), dtype=torch.bool), torch.zeros(count, dtype=torch.bool)])
        logits = self.model(torch.cat([clips, outliers]))
        features = self.penultimate.value
        if self.xi is None:  # the first batch sets the known norm to beat; kept in the history for resumption
            self.xi = float(features[: len(labels)].detach().norm(dim=1).mean())
        weight = config.objectosphere_weight if config.loss == "objectosphere" else 0.0
        targets = torch.cat([labels, torch.zeros(count, dtype=labels.dtype, device=labels.device)])
        loss = objectosphere_loss(logits, features, targets, known.to(logits.device), xi=self.xi, weight=weight,
                                  label_smoothing=config.label_smoothing)
        return logits[: len(labels)], loss

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (a shuffled pass drawing ``clips_per_video`` clips per video); its history row."""
        config, model = self.config, self.model
        model.train()
        for module in self.frozen_norms:  # frozen layers normalise with their own statistics, as in evaluation
            module.eval()
        order = torch.randperm(self.videos * config.clips_per_video, generator=self.rng) % self.videos
        loss_sum, correct, seen, lr = 0.0, 0, 0, 0.0
        self._bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                         disable=not self.progress, leave=True)
        for index in self._bar:
            clips, labels = self.sampler.batch(order[index * self.draws_per_batch:(index + 1) * self.draws_per_batch],
                                               self.rng)
            lr = learning_rate(self.step, self.total_steps, self.warmup_steps, config)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            clips, labels = clips.to(self.device), labels.to(self.device)
            if self.penultimate is None:
                logits = model(clips)
                loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
                if self.factor_loss:
                    loss = loss + config.factor_weight * self.factor_loss(logits, labels)
            else:
                logits, loss = self._openset_step(clips, labels)
            if not torch.isfinite(loss):
                raise TrainingError(f"training diverged: loss {loss.item()} at epoch {epoch + 1}, step {self.step} "
                                    "(try a lower --lr)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            self.optimizer.step()
            self.step += 1
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
            self._postfix = {"loss": f"{loss_sum / seen:.3f}", "acc": f"{correct / seen:.3f}", "lr": f"{lr:.2e}"}
            self._bar.set_postfix(self._postfix)
        row = {"epoch": epoch + 1, "step": self.step, "lr": lr, "train_loss": loss_sum / seen,
               "train_accuracy": correct / seen}
        return row if self.xi is None else {**row, "objectosphere_xi": self.xi}

    def show(self, evaluation: Evaluation | None, watched: str = "test") -> None:
        """Close the epoch's progress bar, with the watched set's accuracies in its summary when there are any."""
        if self._bar is not None:
            if evaluation is not None:
                self._bar.set_postfix({**self._postfix, f"{watched}_clip": f"{evaluation.clip_accuracy:.3f}",
                                       f"{watched}_video": f"{evaluation.video_accuracy:.3f}"})
            self._bar.close()


def _frozen_norms(model: torch.nn.Module, config: TrainConfig) -> list[torch.nn.Module]:
    """The BatchNorm modules a run keeps in evaluation mode: the whole backbone's when it is frozen
    (``backbone_lr_ratio`` 0), else those up to ``freeze_through``."""
    head = head_name(model)
    if config.backbone_lr_ratio == 0:
        names = [n for n, _ in model.named_modules() if n != head and not n.startswith(f"{head}.")]
    elif config.freeze_through is not None:
        names = frozen_modules(model, config.freeze_through)
    else:
        return []
    return [m for m in map(model.get_submodule, names) if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _build_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    model = build_model(config.model, num_classes, **config.model_options)
    if config.motion_init:
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
        motion_energy_init(first_conv, speed=config.motion_init_speed,
                           wavelength=max(6.0, 4.0 * config.motion_init_speed))
    if config.bn_momentum is not None:
        set_bn_momentum(model, config.bn_momentum)
    return model


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of ``metrics.json`` stored in the model manifest's ``extra``: config, accuracies, times, seed."""
    keys = ("config", "seed", "split", "test_clip_accuracy", "test_video_accuracy", "seconds", "threads",
            "torch_version", "num_parameters", "train_videos", "test_videos")
    return {key: metrics[key] for key in keys}


def _prepare_output(config: TrainConfig, resume: bool) -> Any:
    out = config.out
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} exists and is not a directory")
    if resume:
        found = latest_checkpoint(out)
        if found is None:
            raise TrainingError(f"{out}: nothing to resume (no checkpoints/epoch-*.json)")
        checkpoint = load_checkpoint(found)
        differing = config.differences(TrainConfig.parse(checkpoint.config))
        if differing:
            raise TrainingError(f"{found}: cannot resume with a different config ({', '.join(differing)} differ)")
        return checkpoint
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing:
        raise TrainingError(f"{out} already holds a training run ({', '.join(existing)}); "
                            "resume it or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    return None


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _check_caches(config: TrainConfig, train_cache: ClipCache, test_cache: ClipCache,
                  val_cache: ClipCache | None) -> None:
    for name, cache in (("train", train_cache), ("test", test_cache), ("validation", val_cache)):
        if cache is None or (name == "validation" and len(cache) == 0):  # no validation: warned about, not fatal
            continue
        if len(cache) == 0:
            hint = ""
            if config.frame_step > 1:
                hint = (f"; clips span {config.span} frames ({config.clip_len}, every {_ordinal(config.frame_step)}): "
                        "a smaller --frame-step takes shorter videos")
            raise TrainingError(f"{config.data}: no usable {name} videos in split {config.split} "
                                f"({len(cache.skipped)} skipped){hint}")
        narrowest = min(min(frames.shape[1], frames.shape[2]) for frames in cache.frames)
        if narrowest < config.crop:
            raise TrainingError(f"{config.data}: frames resized to short side {config.short_side} are "
                                f"{narrowest} px, smaller than crop {config.crop}")


def _metrics(config: TrainConfig, classes: list[str], model: torch.nn.Module, evaluation: Evaluation,
             history: list[dict[str, Any]], elapsed: dict[str, float], train_cache: ClipCache,
             test_cache: ClipCache, skipped: list) -> dict[str, Any]:
    return {
        "config": config.to_json(),
        "seed": config.seed,
        "split": config.split,
        "classes": list(classes),
        "test_clip_accuracy": evaluation.clip_accuracy,
        "test_video_accuracy": evaluation.video_accuracy,
        "test": evaluation_json(evaluation, classes),
        "history": history,
        "seconds": dict(elapsed),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_videos": len(train_cache),
        "test_videos": len(test_cache),
        "skipped_videos": [{"path": s.path, "reason": s.reason} for s in skipped],
    }
