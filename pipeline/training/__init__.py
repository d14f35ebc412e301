"""CPU training of clipwatch's video classifiers: cached decoding, augmentation, exact resume, shipped-model recipe.

    config = TrainConfig.preset("default", data="/data/synth", out="runs/default")
    report = train(config)                  # model.safetensors + model.json, metrics.json, training_curve.png
    model, manifest = load_model(report.out)
"""

from pipeline.training.augment import ClipSampler
from pipeline.training.cache import ClipCache
from pipeline.training.checkpoint import latest_checkpoint, load_checkpoint
from pipeline.training.config import PRESETS, TrainConfig
from pipeline.training.errors import TrainingError
from pipeline.training.evaluation import Evaluation, eval_clips, evaluate
from pipeline.training.trainer import TrainReport, train

__all__ = [
    "PRESETS",
    "ClipCache",
    "ClipSampler",
    "Evaluation",
    "TrainConfig",
    "TrainReport",
    "TrainingError",
    "eval_clips",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "train",
]
