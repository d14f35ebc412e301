"""Out-of-distribution detection metrics: small pure functions over confidence scores.

Every function takes ``in_scores`` (in-distribution samples) and ``out_scores`` (OOD / attacked samples),
where a higher score means "more in-distribution" (a log-likelihood, a softmax maximum).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _scores_and_labels(in_scores, out_scores) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate scores with labels 1 for in-distribution, 0 for OOD; validate them."""
    inside = np.asarray(in_scores, dtype=np.float64).ravel()
    outside = np.asarray(out_scores, dtype=np.float64).ravel()
    if inside.size == 0 or outside.size == 0:
        raise ValueError(f"need in- and out-of-distribution scores, got {inside.size} and {outside.size}")
    scores = np.concatenate([inside, outside])
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    labels = np.concatenate([np.ones(inside.size), np.zeros(outside.size)])
    return scores, labels


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve, OOD as the positive class (scored by the negated confidence)."""
    scores, labels = _scores_and_labels(in_scores, out_scores)
    return float(roc_auc_score(1 - labels, -scores))


def class_matched_auroc(in_scores, out_scores, in_classes, out_classes) -> float:
    """AUROC against in-distribution samples reweighted to the OOD set's mix of predicted classes.

    Each in-distribution sample of predicted class ``c`` weighs ``n_out(c) / n_in(c)``, so both sides hold the
    classes in the same proportions: what a detector sees beyond *which class* the model predicts. A score that
    only flags one class (say, every clip taken for "standing still") scores high on plain AUROC when the OOD set
    is mostly predicted as that class, and 0.5 here. OOD samples of a class no in-distribution sample is predicted
    as cannot be matched and are left out; NaN when none is left.
    """
    scores, labels = _scores_and_labels(in_scores, out_scores)
    in_classes, out_classes = np.asarray(in_classes).ravel(), np.asarray(out_classes).ravel()
    if in_classes.size != np.sum(labels == 1) or out_classes.size != np.sum(labels == 0):
        raise ValueError(f"{in_classes.size} and {out_classes.size} classes for {int(np.sum(labels == 1))} and "
                         f"{int(np.sum(labels == 0))} scores")
    kinds, index = np.unique(np.concatenate([in_classes, out_classes]), return_inverse=True)
    in_index, out_index = index[: in_classes.size], index[in_classes.size:]
    n_in, n_out = np.bincount(in_index, minlength=kinds.size), np.bincount(out_index, minlength=kinds.size)
    ratio = np.divide(n_out, n_in, out=np.zeros(kinds.size), where=n_in > 0)
    weights = np.concatenate([ratio[in_index], (n_in[out_index] > 0).astype(np.float64)])
    if not weights[labels == 0].any():
        return float("nan")
    return float(roc_auc_score(1 - labels, -scores, sample_weight=weights))


def aupr_in(in_scores, out_scores) -> float:
    """Average precision with in-distribution as the positive class."""
    scores, labels = _scores_and_labels(in_scores, out_scores)
    return float(average_precision_score(labels, scores))


def aupr_out(in_scores, out_scores) -> float:
    """Average precision with OOD as the positive class."""
    scores, labels = _scores_and_labels(in_scores, out_scores)
    return float(average_precision_score(1 - labels, -scores))


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
    """Fraction of OOD samples accepted at the threshold that accepts ``tpr`` of in-distribution samples.

    In-distribution is the positive class (as in the ODIN and Mahalanobis papers); the threshold is the
    first ROC point whose true-positive rate reaches ``tpr``.
    """
    scores, labels = _scores_and_labels(in_scores, out_scores)
    fpr, tpr_curve, _ = roc_curve(labels, scores)
    return float(fpr[np.searchsorted(tpr_curve, tpr, side="left")])


def detection_error(in_scores, out_scores) -> float:
    """Minimum over thresholds of ``0.5 (1 - TPR) + 0.5 FPR`` (in-distribution positive)."""
    scores, labels = _scores_and_labels(in_scores, out_scores)
    fpr, tpr_curve, _ = roc_curve(labels, scores)
    return float(np.min(0.5 * (1.0 - tpr_curve) + 0.5 * fpr))


def video_means(scores, videos) -> np.ndarray:
    """The mean score of each video's clips (``videos``: one video id per clip), one value per distinct id.

    A video-level detector judges a whole video by the average of its clips' scores.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    videos = np.asarray(videos).ravel()
    if scores.shape != videos.shape:
        raise ValueError(f"{scores.size} scores but {videos.size} video ids")
    _, index = np.unique(videos, return_inverse=True)
    return np.bincount(index, weights=scores) / np.bincount(index)


def likelihood_accuracy(class_log_likelihood, y_true, classes=None) -> float:
    """Accuracy of the likelihood classifier: argmax over the ``(N, C)`` class log-likelihoods."""
    cll = np.asarray(class_log_likelihood)
    y_true = np.asarray(y_true)
    if cll.ndim != 2 or cll.shape[0] != y_true.shape[0]:
        raise ValueError(f"class_log_likelihood {cll.shape} does not match {y_true.shape[0]} labels")
    predicted = np.argmax(cll, axis=1)
    if classes is not None:
        predicted = np.asarray(classes)[predicted]
    return float(np.mean(predicted == y_true))


def ood_metrics(in_scores, out_scores) -> dict[str, float]:
    """All detection metrics at once: ``auroc, aupr_in, aupr_out, fpr95, detection_error``."""
    return {
        "auroc": auroc(in_scores, out_scores),
        "aupr_in": aupr_in(in_scores, out_scores),
        "aupr_out": aupr_out(in_scores, out_scores),
        "fpr95": fpr_at_tpr(in_scores, out_scores, 0.95),
        "detection_error": detection_error(in_scores, out_scores),
    }
