"""Evaluation of a detector bundle: the paper's tables (JSON / Markdown) and figures (PNG)."""

from pipeline.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "roc_curves": "plots",
    "score_histograms": "plots",
    "tsne_embedding": "plots",
    "accuracy_of": "report",
    "best_rows": "report",
    "detection_rows": "report",
    "likelihood_accuracy_rows": "report",
    "markdown": "report",
    "write_results": "report",
})

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
