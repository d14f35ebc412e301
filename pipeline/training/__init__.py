"""CPU training of clipwatch's video classifiers: cached decoding, augmentation, exact resume, shipped-model recipe.

    config = TrainConfig.preset("default", data="/data/synth", out="runs/default")
    report = train(config)                  # model.safetensors + model.json, metrics.json, training_curve.png
    model, manifest = load_model(report.out)
"""

from pipeline.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ClipSampler": "augment",
    "ClipCache": "cache",
    "latest_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "PRESETS": "config",
    "TrainConfig": "config",
    "TrainingError": "errors",
    "Evaluation": "evaluation",
    "eval_clips": "evaluation",
    "evaluate": "evaluation",
    "TrainReport": "trainer",
    "train": "trainer",
})

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
