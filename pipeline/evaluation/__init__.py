"""Evaluation of a detector bundle: the paper's tables (JSON / Markdown) and figures (PNG)."""

from pipeline.evaluation.plots import roc_curves, score_histograms, tsne_embedding
from pipeline.evaluation.report import (
    accuracy_of,
    best_rows,
    detection_rows,
    likelihood_accuracy_rows,
    markdown,
    write_results,
)

__all__ = [
    "accuracy_of",
    "best_rows",
    "detection_rows",
    "likelihood_accuracy_rows",
    "markdown",
    "roc_curves",
    "score_histograms",
    "tsne_embedding",
    "write_results",
]
