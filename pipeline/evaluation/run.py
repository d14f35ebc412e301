"""``clipwatch evaluate``: the paper's experiment for a user's bundle, model and dataset, end to end.

In-distribution test clips are compared with every OOD set: novel classes, white-box adversarial framing
(a universal frame learned on the target model over training clips), black-box framing (the same attack
learned on a surrogate model), FGSM, camera tampering made from the test clips (covered lens, defocus, shake,
redirect, lighting: :mod:`pipeline.data.tamper`, far-OOD), and any folder of the user's own attacked clips (``.npz``
written by ``clipwatch attack``). Adaptive attacks that know the detector (``pgd_adaptive``, ``framing_adaptive``,
``framing_adaptive_universal``; :mod:`pipeline.evaluation.adaptive`) run only when asked, once per λ of
``lambdas``, and add an ``adaptive`` block, a table and ``adaptive.png``. All clips are rounded to 8 bits at
the model's resolution, clean ones included, so the detector is never handed quantisation as a clue.

Unless ``detectors`` is empty, the zoo of standard baselines (:mod:`pipeline.detect.zoo`) is fitted on the
in-distribution training split (loaded the same way, ``max_clips_per_video`` honoured) and scored on every set,
one detection row each, next to the bundle's densities.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.attacks import (
    FramingAttack,
    Normalize,
    fgsm,
    from_uint8,
    load_attacked_clips,
    scaled_frame_width,
    to_uint8,
)
from pipeline.data import labelled_videos
from pipeline.data.tamper import TAMPERING, tamper
from pipeline.detect import BundleScores, ClipFeatures, Detector, DetectorBundle, load_clips
from pipeline.detect.features import pixel_batches, pixel_input
from pipeline.detect.zoo import DETECTORS, HeatmapDetector, Mahalanobis, build_zoo, feeding_layer, linear_head
from pipeline.detect.zoo.heatmap import border_mass
from pipeline.errors import ClipwatchError
from pipeline.evaluation import plots
from pipeline.evaluation.adaptive import ADAPTIVE_ATTACKS, DEFAULT_LAMBDAS, adaptive_block, adaptive_sets
from pipeline.evaluation.report import (
    P_VALUE_LEVELS,
    accuracy_of,
    best_zoo_detector,
    detection_rows,
    likelihood_accuracy_rows,
    p_value_calibration_rows,
    verdict_rows,
    write_results,
)
from pipeline.models import load_model
from pipeline.models.device import resolve_device
from pipeline.models.precision import model_precision, prepare_for_inference

log = logging.getLogger(__name__)
ATTACKS = ("framing_whitebox", "framing_blackbox", "fgsm")
ZOO_CHUNK_VIDEOS = 64
"""Training videos decoded at once for the zoo (their clips are held as uint8 until their features are taken)."""


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
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    """Weights of the fused score in the adaptive attacks' objective, one attacked set per attack and value."""
    pgd_eps: float = 8 / 255
    pgd_step_size: float = 2 / 255
    pgd_steps: int = 10
    framing_steps: int = 50
    """Adam steps of the per-clip adaptive frame."""
    attack_loss: str = "ce"
    """The adaptive attacks' misclassification term: ``ce`` or Carlini & Wagner's ``margin`` (with ``kappa``)."""
    kappa: float = 0.0
    tamper: tuple[str, ...] = tuple(TAMPERING)
    """Camera-tampering sets made from the test clips (:data:`pipeline.data.tamper.TAMPERING`), as ``tamper_<kind>``."""
    extra_ood: dict[str, Path] = field(default_factory=dict)
    max_clips_per_video: int | None = None
    batch_size: int = 16
    seed: int = 0
    progress: bool = True
    device: str = "cpu"
    """Where the models run (``cpu``, ``cuda``, ``cuda:N``, ``mps``); densities always score on the CPU."""
    precision: str | None = None
    """The models' arithmetic (:data:`pipeline.models.precision.PRECISIONS`); None: the bundle's."""
    detectors: tuple[str, ...] = tuple(DETECTORS)
    """Zoo baselines to fit and score (:data:`pipeline.detect.zoo.DETECTORS`); empty to skip the zoo."""


def _videos(root: Path, split: int, subset: str | None) -> list[tuple[Path, int]]:
    return labelled_videos(root, split, (subset,) if subset else ("train", "test"))


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
    framing = [a for a in settings.attacks if a in ("framing_whitebox", "framing_blackbox")]
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
            surrogate, _ = prepare_for_inference(surrogate, model_precision(model), device=device)
            if surrogate_manifest.preprocessing.crop != prep.crop:
                raise ClipwatchError(f"surrogate crop {surrogate_manifest.preprocessing.crop} differs from the model's")
            frame = attack.fit_universal(surrogate, train_clips, train_labels,
                                         Normalize.from_preprocessing(surrogate_manifest.preprocessing),
                                         epochs=settings.framing_epochs, progress=settings.progress)
            out[name] = to_uint8(frame.apply(clips01))
        elif name in ADAPTIVE_ATTACKS:
            continue  # pipeline.evaluation.adaptive
        elif name == "fgsm":
            normalize = Normalize.from_preprocessing(prep)
            size = settings.batch_size
            parts = [fgsm(model, clips01[i : i + size].to(device), labels[i : i + size].to(device), normalize,
                          eps=settings.fgsm_eps).cpu() for i in range(0, len(clips01), size)]
            out[name] = to_uint8(torch.cat(parts))
        else:
            raise ClipwatchError(f"unknown attack {name!r}; choose from {ATTACKS + ADAPTIVE_ATTACKS}")
        log.info("%s: %.0f s", name, time.perf_counter() - started)
    return out


def evaluate(settings: EvaluationSettings) -> dict:
    """Run the whole evaluation; writes ``results.json``, ``results.md`` and PNG figures to ``settings.out``."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    detector = Detector.load(settings.bundle, device=device, precision=settings.precision)
    bundle, model, manifest, prep = detector.bundle, detector.model, detector.manifest, detector.manifest.preprocessing
    common = dict(max_clips_per_video=settings.max_clips_per_video, progress=settings.progress)

    clips, labels, clip_paths, skipped = load_clips(_videos(settings.data, settings.split, "test"), prep,
                                                    description="test clips", **common)
    videos = {"clean": np.asarray(clip_paths)}  # each clip's video, for the video-level rows
    clean = detector.features(clips, labels, batch_size=settings.batch_size)
    frames: dict[str, np.ndarray] = {"clean": clips}
    ood: dict[str, ClipFeatures] = {}
    novel_root = settings.novel or (settings.data / "novel" if (settings.data / "novel").is_dir() else None)
    if novel_root is not None:
        novel_clips, _, novel_paths, novel_skipped = load_clips(_videos(novel_root, 1, None), prep,
                                                                description="novel clips", **common)
        videos["novel"] = np.asarray(novel_paths)
        skipped += novel_skipped
        ood["novel"] = detector.features(novel_clips, batch_size=settings.batch_size)
        frames["novel"] = novel_clips
    attacked = _attack_sets(settings, model, manifest, from_uint8(clips), torch.as_tensor(labels), device)
    for name, adv in attacked.items():
        ood[name] = detector.features(adv, labels, batch_size=settings.batch_size)
    frames.update(attacked)
    adaptive = adaptive_sets(settings, detector, from_uint8(clips), torch.as_tensor(labels), device,
                             lambda: _training_clips(settings, prep))
    for name, attacked_set in adaptive.items():
        ood[name] = detector.features(attacked_set.frames, labels, batch_size=settings.batch_size)
        frames[name] = attacked_set.frames
    for kind in settings.tamper:
        tampered = tamper(clips, kind, seed=settings.seed)
        ood[f"tamper_{kind}"] = detector.features(tampered, labels, batch_size=settings.batch_size)
        frames[f"tamper_{kind}"] = tampered
    videos.update({name: videos["clean"] for name in ood if name != "novel"})  # made from the test clips, in order
    for name, path in settings.extra_ood.items():  # the user's own clips: their videos are unknown
        user = load_attacked_clips(path)
        ood[name] = detector.features(user.frames, user.labels, batch_size=settings.batch_size)
        frames[name] = user.frames

    accuracy = {"clean": accuracy_of(clean)}
    accuracy.update({name: accuracy_of(ood[name]) for name in ood if name != "novel"})
    sets = {"clean": clean, **ood}
    set_scores = {name: detector.score_features(f.layers, f.softmax, evidence=f.evidence) for name, f in sets.items()}
    zoo_scores, zoo_info = _zoo(settings, detector, sets, frames) if settings.detectors else ({}, None)
    verdicts = verdict_rows(set_scores)
    results = {
        "accuracy": accuracy,
        "precision": detector.precision,
        "detection": detection_rows(set_scores, sets, zoo_scores, videos),
        "likelihood_accuracy": likelihood_accuracy_rows(bundle, clean),
        "verdicts": verdicts,
        "fusion": {"fused_groups": bundle.calibration.fused_groups, "left_out": bundle.calibration.unfused_groups},
        "false_alarm": {"requested": detector.alpha, "measured": verdicts[0]["flagged"], "clips": len(clean),
                        "p_value_calibration": p_value_calibration_rows(
                            set_scores["clean"].p_value, sorted({*P_VALUE_LEVELS, detector.alpha}))},
        "counts": {"clean": len(clean), **{name: len(f) for name, f in ood.items()}},
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items() if k != "extra_ood"},
    }
    if zoo_info is not None:
        results["zoo"] = zoo_info
    settings.out.mkdir(parents=True, exist_ok=True)
    best = best_zoo_detector(results["detection"], zoo_info)
    plain = {name: f for name, f in ood.items() if name not in adaptive}  # adaptive sets: adaptive.png only
    results["figures"] = _figures(bundle, clean, plain, set_scores, settings.out,
                                  {f"best baseline: {best}": zoo_scores[(best, zoo_info["detectors"][best]["layer"])]}
                                  if best else {})
    if zoo_info is not None and "heatmap" in zoo_info:
        results["figures"].append(zoo_info["heatmap"]["figure"])
    results["figures"].append(plots.p_value_calibration(set_scores["clean"].p_value, detector.alpha,
                                                        settings.out / "p_values.png").name)
    if adaptive:
        results["adaptive"] = adaptive_block(adaptive, clean, sets, set_scores, results["detection"], settings,
                                             detector.alpha)
        results["figures"].append(plots.adaptive_tradeoff(results["adaptive"]["rows"],
                                                          settings.out / "adaptive.png").name)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_results(results, settings.out)
    return results


def _training_features(settings: EvaluationSettings, detector: Detector) -> tuple[ClipFeatures, list[str]]:
    """Features of the in-distribution training split, rounded to 8 bits like every scored clip, decoded a chunk
    of videos at a time so that only one chunk's clips are held in memory; and the videos skipped."""
    videos = _videos(settings.data, settings.split, "train")
    prep = detector.manifest.preprocessing
    parts: list[ClipFeatures] = []
    skipped: list[str] = []
    with tqdm(total=len(videos), desc="zoo training clips", unit="video", disable=not settings.progress) as bar:
        for start in range(0, len(videos), ZOO_CHUNK_VIDEOS):
            chunk = videos[start:start + ZOO_CHUNK_VIDEOS]
            try:
                clips, labels, _, chunk_skipped = load_clips(chunk, prep, progress=False,
                                                             max_clips_per_video=settings.max_clips_per_video)
            except ClipwatchError as exc:  # none of this chunk's videos is readable (each was logged)
                log.warning("zoo training clips: %s", exc)
                skipped += [str(path) for path, _ in chunk]
            else:
                skipped += [path for path, _ in chunk_skipped]
                parts.append(detector.features(clips, labels, batch_size=settings.batch_size, evidence=False))
            bar.update(len(chunk))
    if not parts:
        raise ClipwatchError(f"no readable training clips among {len(videos)} videos for the zoo detectors")
    return ClipFeatures({name: np.concatenate([p.layers[name] for p in parts]) for name in parts[0].layers},
                        np.concatenate([p.logits for p in parts]), np.concatenate([p.labels for p in parts])), skipped


def _training_pixels(settings: EvaluationSettings, preprocessing) -> Iterator[torch.Tensor]:
    """The clips of the training split that :func:`_training_features` reads, as pixel batches in ``[0, 1]``."""
    return pixel_batches(_videos(settings.data, settings.split, "train"), preprocessing, settings.batch_size,
                         max_clips_per_video=settings.max_clips_per_video, chunk_videos=ZOO_CHUNK_VIDEOS)


def _zoo(settings: EvaluationSettings, detector: Detector, sets: dict[str, ClipFeatures],
         frames: dict[str, np.ndarray]) -> tuple[dict[tuple[str, str], dict[str, np.ndarray]], dict]:
    """Fit the zoo on the training split and score every set: ``{(name, layer): {set: scores}}`` and a summary
    (the layer each detector read, what was left out and why, the time taken)."""
    started = time.perf_counter()
    train, skipped = _training_features(settings, detector)
    head = linear_head(detector.model)
    penultimate = feeding_layer(train, head, detector.layers)
    detectors, left_out = build_zoo(settings.detectors, layers=detector.layers, head=head, penultimate=penultimate)
    prep = detector.manifest.preprocessing
    normalize = Normalize.from_preprocessing(prep)
    scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    heatmap_info = None
    for name, zoo_detector in detectors.items():
        from_bundle = isinstance(zoo_detector, HeatmapDetector) and detector.heatmap is not None
        if from_bundle:
            zoo_detector = detectors[name] = detector.heatmap  # the bundle's own decoder: what its alerts show
            log.info("zoo: heatmap rows from the bundle's decoder (floor %.4f)", getattr(zoo_detector, "floor_", 0.0))
        else:
            zoo_detector.fit(train)
            if zoo_detector.needs_training_clips:  # the training clips' pixels, decoded again for each of its passes
                zoo_detector.fit_clips(detector.model, lambda: _training_pixels(settings, prep), normalize)
        if isinstance(zoo_detector, HeatmapDetector):
            raw = {set_name: _heatmaps(zoo_detector, detector.model, f, settings.batch_size, prep, normalize)
                   for set_name, f in frames.items()}
            maps = {set_name: zoo_detector.floored(m) for set_name, m in raw.items()}
            scores[(name, zoo_detector.layer_used)] = {set_name: -m.mean(axis=(1, 2)).astype(np.float64)
                                                       for set_name, m in maps.items()}
            width = settings.frame_width or scaled_frame_width(prep.crop)
            heatmap_info = heatmap_block(maps, width, zoo_detector.losses_)
            heatmap_info["floor"] = getattr(zoo_detector, "floor_", 0.0)
            heatmap_info["decoder"] = "bundle" if from_bundle else "fitted"
            heatmap_info["raw"] = heatmap_block(raw, width, [])["sets"]
            settings.out.mkdir(parents=True, exist_ok=True)
            heatmap_info["figure"] = plots.heatmap_examples(frames, maps, width, settings.out / "heatmaps.png").name
            continue
        if zoo_detector.needs_clips:
            size = settings.batch_size
            scores[(name, zoo_detector.layer_used)] = {
                set_name: np.concatenate([zoo_detector.score_clips(detector.model, pixel_input(f[i:i + size], prep),
                                                                   normalize) for i in range(0, len(f), size)])
                for set_name, f in frames.items()}
            continue
        scores[(name, zoo_detector.layer_used)] = {set_name: zoo_detector.score(f) for set_name, f in sets.items()}
        if isinstance(zoo_detector, Mahalanobis) and len(zoo_detector.layers_) > 1:
            per_layer = {set_name: zoo_detector.layer_scores(f) for set_name, f in sets.items()}
            for layer in zoo_detector.layers_:
                scores[(name, layer)] = {set_name: values[layer] for set_name, values in per_layer.items()}
    info = {"train_clips": len(train), "skipped_train_videos": skipped, "head": head.name, "penultimate": penultimate,
            "detectors": {name: {"layer": d.layer_used, "params": _plain_params(d)} for name, d in detectors.items()},
            "left_out": left_out, "seconds": round(time.perf_counter() - started, 1)}
    if heatmap_info is not None:
        info["heatmap"] = heatmap_info
    log.info("zoo: %d detectors fitted on %d training clips, %.0f s", len(detectors), len(train), info["seconds"])
    return scores, info


def _heatmaps(heatmap: HeatmapDetector, model, frames: np.ndarray, size: int, prep, normalize) -> np.ndarray:
    """Raw heatmaps ``(N, H, W)`` (below the floor too) of uint8 clips, a batch at a time."""
    return np.concatenate([heatmap.heatmaps(model, pixel_input(frames[i:i + size], prep), normalize, raw=True)
                           for i in range(0, len(frames), size)])


def heatmap_block(maps: dict[str, np.ndarray], width: int, losses: list[float]) -> dict:
    """Per set: the mean heatmap value and, on framed sets, the share of heatmap mass within the frame's border
    (mean over clips) and the set's mean heatmap over the clean one's."""
    clean_mean = float(maps["clean"].mean()) if "clean" in maps else float("nan")
    sets = {}
    for name, values in maps.items():
        row = {"mean": float(values.mean()), "over_clean": float(values.mean() / clean_mean) if clean_mean > 0 else None}
        if name.startswith("framing"):
            row["border_mass"] = float(np.nanmean(border_mass(values, width)))
        sets[name] = row
    return {"frame_width": width, "training_loss": [round(v, 5) for v in losses], "sets": sets}


def _plain_params(estimator) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in estimator.get_params().items()
            if v is None or isinstance(v, (bool, int, float, str, tuple))}


def _figures(bundle: DetectorBundle, clean: ClipFeatures, ood: dict[str, ClipFeatures],
             set_scores: dict[str, BundleScores], out: Path, extra: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """ROC curves, histograms and t-SNE; ``extra`` adds scores ``{name: {set: scores}}`` (the best zoo detector)."""
    keys = [f"{bundle.layers[-1]}/{d}" for d in bundle.settings["densities"]]

    def panel(name: str, features: ClipFeatures) -> dict[str, np.ndarray]:
        scores = set_scores[name]
        return {"softmax": features.softmax.max(axis=1), "fused": scores.fused, **{k: scores.loglik[k] for k in keys},
                **{key: values[name] for key, values in extra.items()}}

    clean_panel = panel("clean", clean)
    ood_panels = {name: panel(name, f) for name, f in ood.items()}
    written = [plots.roc_curves(clean_panel, ood_panels, out / "roc.png")] if ood_panels else []
    for name, scores in ood_panels.items():
        written.append(plots.score_histograms(clean_panel, scores, name, out / f"hist_{name}.png"))
    attacked_name = next((n for n in ("framing_whitebox", "fgsm") if n in ood), None)
    if attacked_name:
        layer = bundle.layers[-2] if len(bundle.layers) > 1 else bundle.layers[0]
        written.append(plots.tsne_embedding(clean.layers[layer], clean.labels, ood[attacked_name].layers[layer],
                                            f"t-SNE of {layer}: clean vs {attacked_name}", out / "tsne.png",
                                            class_names=list(bundle.class_names), attacked_name=attacked_name))
    return [p.name for p in written]
