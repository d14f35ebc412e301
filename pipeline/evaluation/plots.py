"""Figures of an evaluation: score histograms (the paper's Fig. 5), ROC curves, t-SNE of one layer (Fig. 4), and the
calibration of the fused p-values on held-out in-distribution clips."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402


def score_histograms(clean: dict[str, np.ndarray], attacked: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """One panel per score (e.g. softmax, layer/sep): in-distribution in green, OOD/attacked in red."""
    fig, axes = plt.subplots(1, len(clean), figsize=(4.2 * len(clean), 3.4), squeeze=False)
    for ax, (name, inside) in zip(axes[0], clean.items(), strict=True):
        outside = attacked[name]
        lo, hi = np.percentile(np.concatenate([inside, outside]), [0.5, 99.5])
        bins = np.linspace(lo, hi, 40)
        ax.hist(np.clip(inside, lo, hi), bins=bins, density=True, alpha=0.6, color="tab:green", label="in-distribution")
        ax.hist(np.clip(outside, lo, hi), bins=bins, density=True, alpha=0.6, color="tab:red", label=title)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score (higher = more in-distribution)", fontsize=8)
        ax.set_ylabel("density of clips", fontsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_curves(clean: dict[str, np.ndarray], ood: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """ROC curves (OOD positive) of each score, one panel per OOD set."""
    fig, axes = plt.subplots(1, len(ood), figsize=(4.2 * len(ood), 3.8), squeeze=False)
    for ax, (ood_name, scores) in zip(axes[0], ood.items(), strict=True):
        for name, inside in clean.items():
            labels = np.r_[np.zeros(inside.size), np.ones(scores[name].size)]
            fpr, tpr, _ = roc_curve(labels, -np.r_[inside, scores[name]])
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auc(fpr, tpr):.3f})", lw=1.2)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
        ax.set_title(ood_name, fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def p_value_calibration(p_values: np.ndarray, alpha: float, path: Path) -> Path:
    """Share of held-out in-distribution clips with p-value <= a, against a: on the diagonal when calibrated."""
    grid = np.linspace(0.0, 1.0, 201)
    measured = np.searchsorted(np.sort(p_values), grid, side="right") / max(p_values.size, 1)
    tops = (1.0, 10 * alpha) if alpha < 0.1 else (1.0,)
    fig, axes = plt.subplots(1, len(tops), figsize=(4.2 * len(tops), 3.8), squeeze=False)
    axes = axes[0]
    for ax, top in zip(axes, tops, strict=True):
        keep = grid <= top
        ax.plot(grid[keep], measured[keep], lw=1.4, label=f"{p_values.size} clean test clips")
        ax.plot([0, top], [0, top], color="grey", lw=0.6, ls="--", label="calibrated")
        ax.axvline(alpha, color="tab:red", lw=0.8, ls=":", label=f"alpha = {alpha:g}")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("nominal false-alarm rate (p-value threshold)", fontsize=8)
        ax.set_ylabel("measured false-alarm rate", fontsize=8)
    axes[0].legend(fontsize=7)
    if len(tops) > 1:
        axes[1].set_title("low end", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tsne_embedding(clean: np.ndarray, clean_labels: np.ndarray, attacked: np.ndarray, title: str, path: Path,
                   seed: int = 0, class_names: list[str] | None = None, attacked_name: str = "attacked") -> Path:
    """t-SNE of one layer's features: clean clips coloured by class (named in the legend), attacked clips as black
    crosses."""
    data = np.concatenate([clean, attacked]).astype(np.float64)
    perplexity = float(min(30, max(5, (len(data) - 1) // 4)))
    embedded = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(data)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours = plt.get_cmap("tab10")
    for label in np.unique(clean_labels):
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else f"class {label}"
        ax.scatter(*embedded[: len(clean)][clean_labels == label].T, color=colours(int(label) % 10), s=8,
                   label=f"clean: {name}")
    ax.scatter(*embedded[len(clean):].T, c="black", marker="x", s=10, label=attacked_name)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("t-SNE 1", fontsize=8)
    ax.set_ylabel("t-SNE 2", fontsize=8)
    ax.legend(fontsize=6, markerscale=1.5, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def adaptive_tradeoff(rows: list[dict], path: Path) -> Path:
    """Attack success against the fused score's detection AUROC, one curve per adaptive attack, λ written beside
    each point (λ values whose points nearly coincide share one label): an attack that knows the detector wants
    the bottom right."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for index, attack in enumerate(dict.fromkeys(row["attack"] for row in rows)):
        points = sorted((r for r in rows if r["attack"] == attack), key=lambda r: r["lambda"])
        success = [100 * r["attack_success"] if r["attack_success"] is not None else np.nan for r in points]
        auroc = [r["fused_auroc"] for r in points]
        colour = plt.get_cmap("tab10")(index)
        ax.plot(success, auroc, marker="o", lw=1.4, color=colour, label=attack)
        labels: list[tuple[float, float, list[str]]] = []
        for x, y, row in zip(success, auroc, points, strict=True):
            if labels and abs(labels[-1][0] - x) < 4 and abs(labels[-1][1] - y) < 0.04:
                labels[-1][2].append(f"{row['lambda']:g}")
            else:
                labels.append((x, y, [f"{row['lambda']:g}"]))
        for x, y, lams in labels:
            right = x > 70  # keep labels inside the axes
            ax.annotate("λ=" + ", ".join(lams), (x, y), textcoords="offset points", fontsize=7, color=colour,
                        xytext=(-6 if right else 6, 8 if index % 2 else -12), ha="right" if right else "left")
    ax.axhline(0.5, color="grey", lw=0.6, ls="--", label="chance (AUROC 0.5)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("attack success (% of correctly classified clips misclassified)", fontsize=8)
    ax.set_ylabel("fused-score detection AUROC (clean vs attacked, unitless)", fontsize=8)
    ax.set_title("adaptive attacks: attack success vs detection", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_examples(frames: dict[str, np.ndarray], maps: dict[str, np.ndarray], width: int, path: Path,
                     per_set: int = 4) -> Path:
    """A row per set: the middle frame of a few clips (uint8 ``(N, T, H, W, 3)``) with its OOD heatmap (``(N, H, W)``,
    0-1) overlaid on one colour scale, and the frame border of ``width`` pixels outlined."""
    names = [name for name in maps if len(maps[name])]
    fig, axes = plt.subplots(len(names), per_set, figsize=(2.1 * per_set + 0.8, 2.2 * len(names)), squeeze=False)
    image = None
    for row, name in enumerate(names):
        picks = np.linspace(0, len(maps[name]) - 1, per_set).round().astype(int)
        for ax, index in zip(axes[row], picks, strict=True):
            clip = frames[name][index]
            ax.imshow(clip[len(clip) // 2])
            image = ax.imshow(maps[name][index], cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55)
            size = clip.shape[1]
            ax.add_patch(plt.Rectangle((width - 0.5, width - 0.5), size - 2 * width, size - 2 * width, fill=False,
                                       ls=":", lw=0.6, color="white"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"mean {maps[name][index].mean():.3f}", fontsize=7)
        axes[row][0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"OOD heatmaps (0 = like the training data, 1 = most changed); dotted: {width}-px frame border",
                 fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="heatmap value")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
