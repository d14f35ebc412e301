"""Calibration of detector scores on held-out in-distribution clips: standardisation, fusion, p-values, verdicts.

Each (layer, density) score is standardised by its calibration mean and deviation; the **fused** score is the
mean of the standardised scores of the fused densities over all layers. A score's conformal **p-value** is
``(1 + #{calibration scores <= s}) / (n + 1)``: under exchangeability, flagging ``p <= alpha`` raises false
alarms on in-distribution clips at rate ``alpha``. The threshold reported is the corresponding score.

Verdicts: a clip is ``normal`` when its fused p-value exceeds ``alpha``. An outlier whose softmax confidence
is at least as high as that of a typical in-distribution clip (the calibration median) is ``adversarial``
(confident prediction on improbable features, the signature of an attack that fools softmax); any other
outlier is ``novel``. This split is a heuristic: the likelihood says *that* a clip is unusual, the softmax
only suggests *why*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMAL, NOVEL, ADVERSARIAL = "normal", "novel", "adversarial"


def conformal_p_values(sorted_calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(1 + #{c <= s}) / (n + 1)`` for each score ``s`` (low scores = unusual = small p-values)."""
    below = np.searchsorted(sorted_calibration, np.asarray(scores, dtype=np.float64), side="right")
    return (1.0 + below) / (sorted_calibration.size + 1.0)


@dataclass
class Calibration:
    """Score statistics of held-out in-distribution clips, keyed ``"layer/density"``."""

    keys: list[str]
    means: np.ndarray
    stds: np.ndarray
    sorted_scores: dict[str, np.ndarray]
    fused_keys: list[str]
    sorted_fused: np.ndarray
    sorted_softmax: np.ndarray
    alpha: float

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], softmax_max: np.ndarray, fused_keys: list[str], alpha: float = 0.01):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"false-alarm rate must be in (0, 1), got {alpha}")
        keys = list(scores)
        missing = [k for k in fused_keys if k not in scores]
        if missing:
            raise ValueError(f"fused scores {missing} were not calibrated")
        n = len(next(iter(scores.values())))
        if n < 2:
            raise ValueError(f"calibration needs at least 2 clips, got {n}")
        means = np.array([np.mean(scores[k]) for k in keys])
        stds = np.array([np.std(scores[k]) for k in keys])
        stds = np.where(stds > 0, stds, 1.0)
        calibration = cls(keys, means, stds, {k: np.sort(scores[k]) for k in keys}, list(fused_keys),
                          np.empty(0), np.sort(np.asarray(softmax_max, dtype=np.float64)), float(alpha))
        calibration.sorted_fused = np.sort(calibration.fuse(scores))
        return calibration

    def standardise(self, key: str, scores: np.ndarray) -> np.ndarray:
        i = self.keys.index(key)
        return (np.asarray(scores, dtype=np.float64) - self.means[i]) / self.stds[i]

    def fuse(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Mean standardised score over ``fused_keys`` (higher = more in-distribution)."""
        return np.mean([self.standardise(k, scores[k]) for k in self.fused_keys], axis=0)

    def p_value(self, key: str, scores: np.ndarray) -> np.ndarray:
        return conformal_p_values(self.sorted_scores[key], scores)

    def fused_p_value(self, fused: np.ndarray) -> np.ndarray:
        return conformal_p_values(self.sorted_fused, fused)

    @property
    def threshold(self) -> float:
        """Largest fused score still flagged at the false-alarm rate ``alpha``."""
        n = self.sorted_fused.size
        k = int(np.floor(self.alpha * (n + 1))) - 1
        return float(self.sorted_fused[k]) if k >= 0 else -np.inf

    @property
    def confident_softmax(self) -> float:
        return float(np.median(self.sorted_softmax))

    def verdicts(self, scores: dict[str, np.ndarray], softmax_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """``(fused, p_value, [(verdict, reasons), ...])`` for a batch of clips."""
        fused = self.fuse(scores)
        p = self.fused_p_value(fused)
        per_key_p = {k: self.p_value(k, scores[k]) for k in self.fused_keys}
        results = []
        for i in range(fused.size):
            if p[i] > self.alpha:
                results.append((NORMAL, []))
                continue
            reasons = [f"fused likelihood p={p[i]:.4f} <= {self.alpha:g}"]
            reasons += [f"{k} p={per_key_p[k][i]:.4f}" for k in self.fused_keys if per_key_p[k][i] <= self.alpha]
            if softmax_max[i] >= self.confident_softmax:
                reasons.append(f"softmax confident ({softmax_max[i]:.3f}) on improbable features")
                results.append((ADVERSARIAL, reasons))
            else:
                reasons.append(f"softmax unsure ({softmax_max[i]:.3f})")
                results.append((NOVEL, reasons))
        return fused, p, results

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"means": self.means, "stds": self.stds, "fused": self.sorted_fused, "softmax": self.sorted_softmax}
        out.update({f"scores/{k}": v for k, v in self.sorted_scores.items()})
        return out

    def settings(self) -> dict:
        return {"keys": self.keys, "fused_keys": self.fused_keys, "alpha": self.alpha}

    @classmethod
    def from_saved(cls, settings: dict, arrays: dict[str, np.ndarray]) -> Calibration:
        keys = list(settings["keys"])
        return cls(keys, arrays["means"], arrays["stds"], {k: arrays[f"scores/{k}"] for k in keys},
                   list(settings["fused_keys"]), arrays["fused"], arrays["softmax"], float(settings["alpha"]))
