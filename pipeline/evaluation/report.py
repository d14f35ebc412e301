"""The paper's tables for a user's model: detection metrics per OOD set, layer and density; accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.detect import BundleScores, ClipFeatures, DetectorBundle
from pipeline.detect.calibration import ADVERSARIAL, NORMAL, NOVEL
from pipeline.metrics import auroc, class_matched_auroc, likelihood_accuracy, ood_metrics, video_means

METRIC_KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_error")


def detection_rows(scores: dict[str, BundleScores], features: dict[str, ClipFeatures],
                   zoo: dict[tuple[str, str], dict[str, np.ndarray]] | None = None,
                   videos: dict[str, np.ndarray] | None = None) -> list[dict]:
    """One row per (OOD set, layer, density) plus the fused score, the softmax baseline and each zoo score.

    ``scores`` and ``features`` hold the in-distribution set under ``"clean"`` and every OOD set by name; the
    scores are the bundle's, computed once by the caller. ``zoo`` maps ``(detector, layer)`` to its scores of
    every set (:mod:`pipeline.detect.zoo`); its rows carry the detector's name as ``density``. ``videos`` maps a
    set to the video id of each of its clips; rows of a set that has them (and ``clean`` too) add
    ``video_auroc``, the AUROC of each video's mean score. Every row has ``class_matched_auroc``: the clean clips
    reweighted to the OOD set's mix of predicted classes (:func:`~pipeline.metrics.class_matched_auroc`), which
    tells a detector of novelty from a detector of the class novel clips are taken for.
    """
    clean_scores, clean = scores["clean"], features["clean"]
    clean_predicted = np.argmax(clean.logits, axis=1)
    videos = videos or {}
    rows = []
    for ood_name, ood in features.items():
        if ood_name == "clean":
            continue
        ood_scores = scores[ood_name]
        ids = (videos["clean"], videos[ood_name]) if "clean" in videos and ood_name in videos else None
        predicted = (clean_predicted, np.argmax(ood.logits, axis=1))

        def metrics(inside, outside, ids=ids, predicted=predicted) -> dict[str, float]:
            found = ood_metrics(inside, outside)
            matched = class_matched_auroc(inside, outside, *predicted)
            found["class_matched_auroc"] = None if np.isnan(matched) else matched
            if ids is not None:
                found["video_auroc"] = auroc(video_means(inside, ids[0]), video_means(outside, ids[1]))
            return found

        for key, inside in clean_scores.loglik.items():
            layer, density = key.split("/")
            rows.append({"ood_set": ood_name, "layer": layer, "density": density,
                         **metrics(inside, ood_scores.loglik[key])})
        rows.append({"ood_set": ood_name, "layer": "all", "density": "fused",
                     **metrics(clean_scores.fused, ood_scores.fused)})
        rows.append({"ood_set": ood_name, "layer": "output", "density": "softmax",
                     **metrics(clean.softmax.max(axis=1), ood.softmax.max(axis=1))})
        for (name, layer), set_scores in (zoo or {}).items():
            rows.append({"ood_set": ood_name, "layer": layer, "density": name,
                         **metrics(set_scores["clean"], set_scores[ood_name])})
    return rows


def zoo_rows(rows: list[dict], zoo: dict | None) -> dict[str, dict[str, dict]]:
    """Per OOD set, each zoo detector's row at the layer it scores by default (``zoo["detectors"]``), so that no
    layer is picked by its OOD result."""
    out: dict[str, dict[str, dict]] = {}
    detectors = (zoo or {}).get("detectors", {})
    for row in rows:
        if row["density"] in detectors and row["layer"] == detectors[row["density"]]["layer"]:
            out.setdefault(row["ood_set"], {})[row["density"]] = row
    return out


def best_zoo_detector(rows: list[dict], zoo: dict | None) -> str | None:
    """The zoo detector with the highest AUROC averaged over the OOD sets, or None without a zoo."""
    per_set = zoo_rows(rows, zoo)
    names = {name for slot in per_set.values() for name in slot}
    if not names:
        return None
    return max(sorted(names), key=lambda n: np.mean([s[n]["auroc"] for s in per_set.values() if n in s]))


def likelihood_accuracy_rows(bundle: DetectorBundle, clean: ClipFeatures) -> list[dict]:
    """The paper's Table 1: accuracy of the likelihood classifier per layer and density, and of the softmax."""
    rows = []
    for layer in bundle.layers:
        reduced = bundle.reducers[layer].transform(clean.layers[layer])
        for name in bundle.settings["densities"]:
            model = bundle.densities[f"{layer}/{name}"]
            accuracy = likelihood_accuracy(model.class_log_likelihood(reduced), clean.labels, model.classes_)
            rows.append({"layer": layer, "density": name, "accuracy": accuracy})
    rows.append({"layer": "output", "density": "softmax", "accuracy": accuracy_of(clean)})
    return rows


def accuracy_of(features: ClipFeatures) -> float:
    return float(np.mean(np.argmax(features.logits, axis=1) == features.labels))


P_VALUE_LEVELS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def p_value_calibration_rows(p_values: np.ndarray, levels=P_VALUE_LEVELS) -> list[dict]:
    """Share of held-out in-distribution clips flagged at each nominal rate ``p <= a`` (``a`` when calibrated)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    return [{"nominal": float(a), "measured": float(np.mean(p_values <= a))} for a in levels]


def verdict_rows(scores: dict[str, BundleScores]) -> list[dict]:
    """At the bundle's calibrated operating point: the share of each set's clips per verdict (what an operator sees)."""
    rows = []
    for name, set_scores in scores.items():
        verdicts = np.array(set_scores.verdicts)
        rows.append({"set": name, "clips": int(verdicts.size), "flagged": float(np.mean(verdicts != NORMAL)),
                     **{label: float(np.mean(verdicts == label)) for label in (NORMAL, NOVEL, ADVERSARIAL)}})
    return rows


def best_rows(rows: list[dict]) -> dict[str, dict]:
    """Per OOD set, the best layer for each density by AUROC."""
    best: dict[str, dict] = {}
    for row in rows:
        slot = best.setdefault(row["ood_set"], {})
        current = slot.get(row["density"])
        if current is None or row["auroc"] > current["auroc"]:
            slot[row["density"]] = row
    return best


def markdown(results: dict) -> str:
    """``results.md``: accuracy, best-layer summary, full detection table, likelihood-classifier accuracy."""
    lines = ["# clipwatch evaluation", ""]
    lines += ["## Accuracy (clip level)", "", "| set | accuracy |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in results["accuracy"].items()]
    lines += ["", f"False alarms on held-out in-distribution clips: {results['false_alarm']['measured']:.4f} "
              f"(requested {results['false_alarm']['requested']:.4f})", ""]
    if results.get("fusion"):
        left_out = results["fusion"]["left_out"]
        lines += [f"Fused score: the lowest of the groups {', '.join(results['fusion']['fused_groups'])}"
                  + (f" (left out, still reported: {', '.join(left_out)})" if left_out else ""), ""]
    if results["false_alarm"].get("p_value_calibration"):
        rows = results["false_alarm"]["p_value_calibration"]
        lines += ["Fused p-values on those clips (calibrated: measured = nominal):", "",
                  "| nominal rate | " + " | ".join(f"{r['nominal']:g}" for r in rows) + " |",
                  "|---" * (len(rows) + 1) + "|",
                  "| measured | " + " | ".join(f"{r['measured']:.4f}" for r in rows) + " |", ""]
    if results.get("verdicts"):
        lines += [f"## Verdicts at the calibrated operating point (false-alarm rate "
                  f"{results['false_alarm']['requested']:g})", "",
                  "| set | clips | flagged | normal | novel | adversarial |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['set']} | {r['clips']} | {r['flagged']:.3f} | {r['normal']:.3f} | {r['novel']:.3f} | "
                  f"{r['adversarial']:.3f} |" for r in results["verdicts"]]
        lines.append("")
    lines += ["## Best layer per density (AUROC)", ""]
    densities = ["gmm", "sep", "tied", "fused", "softmax"]
    lines += ["| OOD set | " + " | ".join(densities) + " |", "|---" * (len(densities) + 1) + "|"]
    for ood, slot in best_rows(results["detection"]).items():
        cells = [f"{slot[d]['auroc']:.3f} ({slot[d]['layer']})" if d in slot else "-" for d in densities]
        lines.append(f"| {ood} | " + " | ".join(cells) + " |")
    lines += _zoo_table(results)
    lines += _heatmap_table(results)
    lines += _adaptive_table(results)
    keys = METRIC_KEYS + tuple(k for k in ("class_matched_auroc", "video_auroc")
                               if any(k in r for r in results["detection"]))
    lines += ["", "## All detection metrics", "",
              "| OOD set | layer | density | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for row in results["detection"]:
        cells = " | ".join(f"{row[k]:.4f}" if row.get(k) is not None else "-" for k in keys)
        lines.append(f"| {row['ood_set']} | {row['layer']} | {row['density']} | {cells} |")
    lines += ["", "## Likelihood classifier accuracy (clean test clips)", "", "| layer | density | accuracy |",
              "|---|---|---|"]
    lines += [f"| {r['layer']} | {r['density']} | {r['accuracy']:.3f} |" for r in results["likelihood_accuracy"]]
    return "\n".join(lines) + "\n"


def _zoo_table(results: dict) -> list[str]:
    """The fused score against the zoo's baselines, AUROC per OOD set (each baseline at its default layer), clip
    level and, where the sets have video ids, video level (each video's mean score)."""
    zoo = results.get("zoo")
    per_set = zoo_rows(results["detection"], zoo)
    if not per_set:
        return []
    names = list(zoo["detectors"])
    lines = []
    levels = [("auroc", f"AUROC; baselines fitted on {zoo['train_clips']} training clips")]
    if any("video_auroc" in r for r in results["detection"]):
        levels.append(("video_auroc", "video level: AUROC of each video's mean score"))
    if any("class_matched_auroc" in r for r in results["detection"]):
        levels.append(("class_matched_auroc", "class-matched: the clean clips reweighted to each set's mix of "
                                              "predicted classes, so a score that flags one class gains nothing"))
    for key, title in levels:
        fused = {r["ood_set"]: r[key] for r in results["detection"]
                 if r["density"] == "fused" and r.get(key) is not None}
        lines += ["", f"## Fused score vs the baselines ({title})", "",
                  "| OOD set | fused | best baseline | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
        for ood, slot in per_set.items():
            if ood not in fused:
                continue
            rated = [r for r in slot.values() if r.get(key) is not None]
            if not rated:
                continue
            best = max(rated, key=lambda r: r[key])
            cells = [f"{slot[n][key]:.3f}" if slot.get(n, {}).get(key) is not None else "-" for n in names]
            lines.append(f"| {ood} | {fused[ood]:.3f} | {best[key]:.3f} ({best['density']}) | "
                         + " | ".join(cells) + " |")
    layers = ", ".join(f"{n}: {d['layer']}" for n, d in zoo["detectors"].items())
    lines += ["", f"Layers read: {layers}."]
    if zoo.get("left_out"):
        lines.append("Left out: " + "; ".join(f"{n} ({why})" for n, why in zoo["left_out"].items()) + ".")
    return lines


def _heatmap_table(results: dict) -> list[str]:
    """The OOD heatmaps: mean value per set against the clean clips', and how much of a framed clip's heatmap mass
    lies within the frame's border."""
    block = (results.get("zoo") or {}).get("heatmap")
    if not block:
        return []
    raw = block.get("raw", {})
    source = "the bundle's own" if block.get("decoder") == "bundle" else "trained for this evaluation"
    lines = ["", "## OOD heatmaps (decoder over the classifier's feature maps)", "",
             f"Decoder: {source}. "
             f"Border: the outer {block['frame_width']} px. Floor {block.get('floor', 0.0):.4f} (heatmaps above it, "
             f"rescaled; raw: the decoder's output). Figure: `{block.get('figure', '-')}`.", "",
             "| set | mean heatmap | / clean | mass inside the border | raw: mean | / clean | border mass |",
             "|---|---|---|---|---|---|---|"]

    def cells(row: dict) -> str:
        ratio = "-" if row.get("over_clean") is None else f"{row['over_clean']:.2f}"
        mass = f"{row['border_mass']:.3f}" if "border_mass" in row else "-"
        return f"{row['mean']:.4f} | {ratio} | {mass}"

    for name, row in block["sets"].items():
        lines.append(f"| {name} | {cells(row)} | {cells(raw[name]) if name in raw else '- | - | -'} |")
    return lines


def _adaptive_table(results: dict) -> list[str]:
    """Per adaptive attack and λ: what it achieved against the classifier and how well each detector still sees it."""
    block = results.get("adaptive")
    if not block:
        return []
    zoo = (results.get("zoo") or {}).get("detectors", {})
    lines = ["", "## Adaptive attacks (the attacker knows the detector)", "",
             f"Objective: {block['objective']}. Success: share of the {block['clean_correct']} correctly classified "
             f"clean clips the attack misclassifies; flagged: share of all attacked clips with fused p-value <= "
             f"{block['alpha']:g}; evaded: share of those {block['clean_correct']} clips misclassified and not flagged; "
             f"fused AUROC over all attacked clips, and over those it fooled only (correct before, wrong after; "
             f"clips the attack failed on are no threat); fused median of clean clips {block['clean_fused_median']:.2f}. Note: {block['rounding']}.", "",
             "| attack | λ | accuracy | success | flagged | evaded | fused AUROC | fused AUROC, fooled | "
             "best density row | best zoo row | softmax | fused median (float → uint8) |", "|---" * 12 + "|"]
    for row in block["rows"]:
        auroc = row["auroc"]
        split = {key: key.split("/") for key in auroc}  # layer, density (or zoo detector)
        densities = {k: v for k, v in auroc.items() if split[k][1] in ("gmm", "sep", "tied")}
        baselines = {k: v for k, v in auroc.items() if zoo.get(split[k][1], {}).get("layer") == split[k][0]}
        success, evaded, fooled = ("-" if row.get(k) is None else f"{row[k]:.3f}"
                                   for k in ("attack_success", "evaded", "fused_auroc_succeeded"))
        lines.append(f"| {row['attack']} | {row['lambda']:g} | {row['accuracy']:.3f} | {success} | "
                     f"{row['flagged']:.3f} | {evaded} | {row['fused_auroc']:.3f} | {fooled} | {_best(densities)} | "
                     f"{_best(baselines)} | {auroc.get('output/softmax', float('nan')):.3f} | "
                     f"{row['fused_median_float']:.2f} → {row['fused_median']:.2f} |")
    return lines


def _best(auroc: dict[str, float]) -> str:
    if not auroc:
        return "-"
    key = max(auroc, key=auroc.get)
    return f"{auroc[key]:.3f} ({key})"


def write_results(results: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(markdown(results))
