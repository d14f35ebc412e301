"""``clipwatch evaluate``: the paper's experiment for a user's bundle, model and dataset, end to end.

In-distribution test clips are compared with every OOD set: novel classes, white-box adversarial framing
(a universal frame learned on the target model over training clips), black-box framing (the same attack
learned on a surrogate model), FGSM, and any folder of the user's own attacked clips (``.npz`` written by
``clipwatch attack``). All clips are rounded to 8 bits at the model's resolution, clean ones included, so
the detector is never handed quantisation as a clue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.attacks import (
    FramingAttack,
    Normalize,
    fgsm,
    from_uint8,
    load_attacked_clips,
    scaled_frame_width,
    to_uint8,
)
from pipeline.data import UCF101
from pipeline.detect import BundleScores, ClipFeatures, Detector, DetectorBundle, load_clips
from pipeline.errors import ClipwatchError
from pipeline.evaluation import plots
from pipeline.evaluation.report import (
    P_VALUE_LEVELS,
    accuracy_of,
    detection_rows,
    likelihood_accuracy_rows,
    p_value_calibration_rows,
    verdict_rows,
    write_results,
)
from pipeline.models import load_model
from pipeline.models.device import resolve_device

log = logging.getLogger(__name__)
ATTACKS = ("framing_whitebox", "framing_blackbox", "fgsm")


@dataclass
class EvaluationSettings:
    bundle: Path
    data: Path
    out: Path
    split: int = 1
    novel: Path | None = None
    surrogate: str | None = "default-surrogate"
    attacks: tuple[str, ...] = ATTACKS
    frame_width: int | None = None
    framing_epochs: int = 3
    framing_lr: float = 0.1
    framing_train_clips: int = 512
    fgsm_eps: float = 8 / 255
    extra_ood: dict[str, Path] = field(default_factory=dict)
    max_clips_per_video: int | None = None
    batch_size: int = 16
    seed: int = 0
    progress: bool = True
    device: str = "cpu"
    """Where the models run (``cpu``, ``cuda``, ``cuda:N``, ``mps``); densities always score on the CPU."""


def _videos(root: Path, split: int, subset: str | None) -> list[tuple[Path, int]]:
    subsets = (subset,) if subset else ("train", "test")
    seen, videos = set(), []
    for name in subsets:
        for sample in UCF101(root, split=split, subset=name, missing="skip").samples:
            if sample.path not in seen:
                seen.add(sample.path)
                videos.append((sample.path, sample.label))
    return videos


def _training_clips(settings: EvaluationSettings, preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    videos = _videos(settings.data, settings.split, "train")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(videos))
    clips, labels, _, _ = load_clips([videos[i] for i in order], preprocessing, max_clips_per_video=1,
                                     progress=settings.progress, description="attack training clips")
    keep = slice(0, settings.framing_train_clips)
    return from_uint8(clips[keep]), torch.as_tensor(labels[keep])


def _attack_sets(settings, model, manifest, clips01, labels, device: torch.device) -> dict[str, np.ndarray]:
    """uint8 attacked clips per attack name; ``clips01`` and ``labels`` on the CPU, attacks run on ``device``."""
    prep = manifest.preprocessing
    width = settings.frame_width or scaled_frame_width(prep.crop)
    out: dict[str, np.ndarray] = {}
    framing = [a for a in settings.attacks if a.startswith("framing")]
    train_clips = train_labels = None
    if framing:
        train_clips, train_labels = (t.to(device) for t in _training_clips(settings, prep))
    attack = FramingAttack(width=width, lr=settings.framing_lr, seed=settings.seed)
    for name in settings.attacks:
        started = time.perf_counter()
        if name == "framing_whitebox":
            frame = attack.fit_universal(model, train_clips, train_labels, Normalize.from_preprocessing(prep),
                                         epochs=settings.framing_epochs, progress=settings.progress)
            out[name] = to_uint8(frame.apply(clips01))
        elif name == "framing_blackbox":
            if not settings.surrogate:
                continue
            surrogate, surrogate_manifest = load_model(settings.surrogate, map_location=device)
            if surrogate_manifest.preprocessing.crop != prep.crop:
                raise ClipwatchError(f"surrogate crop {surrogate_manifest.preprocessing.crop} differs from the model's")
            frame = attack.fit_universal(surrogate, train_clips, train_labels,
                                         Normalize.from_preprocessing(surrogate_manifest.preprocessing),
                                         epochs=settings.framing_epochs, progress=settings.progress)
            out[name] = to_uint8(frame.apply(clips01))
        elif name == "fgsm":
            normalize = Normalize.from_preprocessing(prep)
            size = settings.batch_size
            parts = [fgsm(model, clips01[i : i + size].to(device), labels[i : i + size].to(device), normalize,
                          eps=settings.fgsm_eps).cpu() for i in range(0, len(clips01), size)]
            out[name] = to_uint8(torch.cat(parts))
        else:
            raise ClipwatchError(f"unknown attack {name!r}; choose from {ATTACKS}")
        log.info("%s: %.0f s", name, time.perf_counter() - started)
    return out


def evaluate(settings: EvaluationSettings) -> dict:
    """Run the whole evaluation; writes ``results.json``, ``results.md`` and PNG figures to ``settings.out``."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    detector = Detector.load(settings.bundle, device=device)
    bundle, model, manifest, prep = detector.bundle, detector.model, detector.manifest, detector.manifest.preprocessing
    common = dict(max_clips_per_video=settings.max_clips_per_video, progress=settings.progress)

    clips, labels, _, skipped = load_clips(_videos(settings.data, settings.split, "test"), prep,
                                           description="test clips", **common)
    clean = detector.features(clips, labels, batch_size=settings.batch_size)
    ood: dict[str, ClipFeatures] = {}
    novel_root = settings.novel or (settings.data / "novel" if (settings.data / "novel").is_dir() else None)
    if novel_root is not None:
        novel_clips, _, _, novel_skipped = load_clips(_videos(novel_root, 1, None), prep,
                                                      description="novel clips", **common)
        skipped += novel_skipped
        ood["novel"] = detector.features(novel_clips, batch_size=settings.batch_size)
    attacked = _attack_sets(settings, model, manifest, from_uint8(clips), torch.as_tensor(labels), device)
    for name, adv in attacked.items():
        ood[name] = detector.features(adv, labels, batch_size=settings.batch_size)
    for name, path in settings.extra_ood.items():
        user = load_attacked_clips(path)
        ood[name] = detector.features(user.frames, user.labels, batch_size=settings.batch_size)

    accuracy = {"clean": accuracy_of(clean)}
    accuracy.update({name: accuracy_of(ood[name]) for name in ood if name != "novel"})
    set_scores = {name: detector.score_features(f.layers, f.softmax) for name, f in {"clean": clean, **ood}.items()}
    verdicts = verdict_rows(set_scores)
    results = {
        "accuracy": accuracy,
        "detection": detection_rows(set_scores, {"clean": clean, **ood}),
        "likelihood_accuracy": likelihood_accuracy_rows(bundle, clean),
        "verdicts": verdicts,
        "false_alarm": {"requested": detector.alpha, "measured": verdicts[0]["flagged"], "clips": len(clean),
                        "p_value_calibration": p_value_calibration_rows(
                            set_scores["clean"].p_value, sorted({*P_VALUE_LEVELS, detector.alpha}))},
        "counts": {"clean": len(clean), **{name: len(f) for name, f in ood.items()}},
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items() if k != "extra_ood"},
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    results["figures"] = _figures(bundle, clean, ood, set_scores, settings.out)
    results["figures"].append(plots.p_value_calibration(set_scores["clean"].p_value, detector.alpha,
                                                        settings.out / "p_values.png").name)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_results(results, settings.out)
    return results


def _figures(bundle: DetectorBundle, clean: ClipFeatures, ood: dict[str, ClipFeatures],
             set_scores: dict[str, BundleScores], out: Path) -> list[str]:
    keys = [f"{bundle.layers[-1]}/{d}" for d in bundle.settings["densities"]]

    def panel(features: ClipFeatures, scores) -> dict[str, np.ndarray]:
        return {"softmax": features.softmax.max(axis=1), "fused": scores.fused, **{k: scores.loglik[k] for k in keys}}

    clean_panel = panel(clean, set_scores["clean"])
    ood_panels = {name: panel(f, set_scores[name]) for name, f in ood.items()}
    written = [plots.roc_curves(clean_panel, ood_panels, out / "roc.png")]
    for name, scores in ood_panels.items():
        written.append(plots.score_histograms(clean_panel, scores, name, out / f"hist_{name}.png"))
    attacked_name = next((n for n in ("framing_whitebox", "fgsm") if n in ood), None)
    if attacked_name:
        layer = bundle.layers[-2] if len(bundle.layers) > 1 else bundle.layers[0]
        written.append(plots.tsne_embedding(clean.layers[layer], clean.labels, ood[attacked_name].layers[layer],
                                            f"t-SNE of {layer}: clean vs {attacked_name}", out / "tsne.png",
                                            class_names=list(bundle.class_names), attacked_name=attacked_name))
    return [p.name for p in written]
