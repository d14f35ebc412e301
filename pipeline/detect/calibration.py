"""Calibration of detector scores on held-out in-distribution clips: standardisation, fusion, p-values, verdicts.

Each (layer, density) score is standardised by its calibration mean and deviation. The fused keys form **groups**:
*low-level* layers (early convolutions: texture, edges, local motion), *semantic* ones (the embedding and the
logits' likelihood), the *output* score (the logits' energy, ``logsumexp``: how strongly the classifier answers any
known class, Liu et al. 2020), and one group for each piece of *evidence* the bundle fuses besides its densities
(:mod:`pipeline.detect.evidence`: the OOD heatmap, the prediction's consistency when the border is masked), named by
its key's prefix. A group's score is the mean of its standardised scores, standardised again on the calibration set;
the **fused** score is the lower of the group scores, so a clip is as unusual as its most unusual view (on the
synthetic benchmark, novel activities look ordinary to early layers and a painted frame looks glaring to them, so
averaging all layers into one score would bury one or the other). A group that rates some kinds of outlier as *more*
typical than clean clips only adds its clean tail to that minimum: it can be left out of the fused score
(:meth:`Calibration.without_groups`, chosen on auxiliary outliers by :mod:`pipeline.detect.fusion`), and is then
still calibrated and reported. A score's conformal **p-value** is ``(1 + #{calibration scores <= s}) / (n + 1)``:
under exchangeability, flagging ``p <= alpha`` raises false alarms on in-distribution clips at rate ``alpha``. The
threshold reported is the corresponding score.

Verdicts: a clip is ``normal`` when its fused p-value exceeds ``alpha``. An outlier flagged by its low-level
group is ``adversarial`` (the pixels themselves are improbable: a painted frame, a perturbation, tampering), and
so is any flagged clip whose low-level layers find it improbable when they are left out of the fused score (one
of their keys at ``p <= alpha / keys``);
one flagged by its semantic group is ``adversarial`` when its softmax confidence is at least that of a typical
in-distribution clip (the calibration median: a confident prediction on improbable features, the signature of an
attack that fools softmax), and ``novel`` otherwise; one flagged by its output score (no known class fits) is
``novel``; one flagged by its heatmap (part of the frame differs from anything seen in training) is ``adversarial``,
and one flagged by its border consistency (the prediction does not survive masking the frame's outer band) is
``adversarial`` when the softmax is confident as above, ``novel`` otherwise (an unsure prediction on an unfamiliar
activity moves too). This split is a heuristic: the likelihood says *that* a clip is unusual, which layers and the
softmax only suggest *why*.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.errors import ClipwatchError

NORMAL, NOVEL, ADVERSARIAL = "normal", "novel", "adversarial"
LOW_LEVEL, SEMANTIC, OUTPUT = "low-level", "semantic", "output"
EVIDENCE_REASONS = {
    "heatmap": "the OOD heatmap is high: part of the frame differs from the training data (the thumbnail shows where)",
    "border": "the prediction changes when the frame's border is masked (a painted frame, or an unstable guess)",
}


class CalibrationError(ClipwatchError, ValueError):
    """A false-alarm rate outside (0, 1), too few calibration clips, or scores that do not match the settings."""


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
    low_level_keys: list[str] = field(default_factory=list)
    output_keys: list[str] = field(default_factory=list)
    group_means: np.ndarray = field(default_factory=lambda: np.zeros(1))
    group_stds: np.ndarray = field(default_factory=lambda: np.ones(1))
    evidence_keys: list[str] = field(default_factory=list)
    unfused_groups: list[str] = field(default_factory=list)
    """Groups calibrated and reported but left out of the fused minimum (:meth:`without_groups`)."""

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], softmax_max: np.ndarray, fused_keys: list[str], alpha: float = 0.01,
            low_level_keys: list[str] = (), output_keys: list[str] = (), evidence_keys: list[str] = ()):
        """Calibrate on in-distribution ``scores``; ``low_level_keys`` and ``output_keys`` form groups of their own,
        and so does each of ``evidence_keys`` (all disjoint subsets of ``fused_keys``)."""
        if not 0.0 < alpha < 1.0:
            raise CalibrationError(f"false-alarm rate must be in (0, 1), got {alpha}")
        keys = list(scores)
        missing = [k for k in fused_keys if k not in scores]
        if missing:
            raise CalibrationError(f"fused scores {missing} were not calibrated")
        apart = (*low_level_keys, *output_keys, *evidence_keys)
        stray = [k for k in apart if k not in fused_keys]
        if stray or len(set(apart)) < len(apart):
            raise CalibrationError(f"low-level {list(low_level_keys)}, output {list(output_keys)} and evidence "
                                   f"{list(evidence_keys)} scores must be distinct fused scores "
                                   f"(fused: {list(fused_keys)})")
        prefixes = [key.split("/")[0] for key in evidence_keys]
        if len(set(prefixes)) < len(prefixes) or set(prefixes) & {LOW_LEVEL, SEMANTIC, OUTPUT}:
            raise CalibrationError(f"evidence keys {list(evidence_keys)} must have distinct prefixes (their groups' "
                                   f"names) other than {LOW_LEVEL}, {SEMANTIC} and {OUTPUT}")
        n = len(next(iter(scores.values())))
        if n < 2:
            raise CalibrationError(f"calibration needs at least 2 clips, got {n}")
        means = np.array([np.mean(scores[k]) for k in keys])
        stds = np.array([np.std(scores[k]) for k in keys])
        stds = np.where(stds > 0, stds, 1.0)
        calibration = cls(keys, means, stds, {k: np.sort(scores[k]) for k in keys}, list(fused_keys),
                          np.empty(0), np.sort(np.asarray(softmax_max, dtype=np.float64)), float(alpha),
                          list(low_level_keys), list(output_keys), evidence_keys=list(evidence_keys))
        groups = calibration._group_means(scores)
        calibration.group_means = np.array([np.mean(g) for g in groups.values()])
        calibration.group_stds = np.array([np.std(g) if np.std(g) > 0 else 1.0 for g in groups.values()])
        calibration.sorted_fused = np.sort(calibration.fuse(scores))
        return calibration

    def with_alpha(self, alpha: float) -> Calibration:
        """A copy flagging at false-alarm rate ``alpha`` instead (this calibration is left as it is; arrays shared)."""
        alpha = float(alpha)
        if not 0.0 < alpha < 1.0:
            raise CalibrationError(f"false-alarm rate must be in (0, 1), got {alpha}")
        return replace(self, alpha=alpha)

    def without_groups(self, names: list[str] | tuple[str, ...], scores: dict[str, np.ndarray]) -> Calibration:
        """A copy whose fused score is the minimum over the other groups only, its fused calibration recomputed from
        the same calibration ``scores`` (those :meth:`fit` was given). The groups left out are still calibrated and
        still label a flagged clip (see :meth:`verdicts`); this calibration is left as it is."""
        names = list(dict.fromkeys(names))
        unknown = [name for name in names if name not in self.groups]
        if unknown or len(names) >= len(self.groups):
            raise CalibrationError(f"cannot leave out groups {names}: the groups are {list(self.groups)}, and at "
                                   "least one must stay fused")
        calibration = replace(self, unfused_groups=names)
        calibration.sorted_fused = np.sort(calibration.fuse(scores))
        return calibration

    @property
    def fused_groups(self) -> list[str]:
        """The groups the fused score is the minimum of."""
        return [name for name in self.groups if name not in self.unfused_groups]

    def standardise(self, key: str, scores: np.ndarray) -> np.ndarray:
        i = self.keys.index(key)
        return (np.asarray(scores, dtype=np.float64) - self.means[i]) / self.stds[i]

    @property
    def groups(self) -> dict[str, list[str]]:
        """Fused keys by group: ``low-level``, ``semantic``, ``output``, then one group per evidence key (named by
        its prefix, e.g. ``heatmap``); empty groups left out."""
        apart = [*self.low_level_keys, *self.output_keys, *self.evidence_keys]
        grouped = {LOW_LEVEL: [k for k in self.fused_keys if k in self.low_level_keys],
                   SEMANTIC: [k for k in self.fused_keys if k not in apart],
                   OUTPUT: [k for k in self.fused_keys if k in self.output_keys]}
        grouped.update({key.split("/")[0]: [key] for key in self.fused_keys if key in self.evidence_keys})
        return {name: keys for name, keys in grouped.items() if keys}

    def _group_means(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.mean([self.standardise(k, scores[k]) for k in keys], axis=0)
                for name, keys in self.groups.items()}

    def group_scores(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each group's mean standardised score, standardised on the calibration set (higher = more in-distribution)."""
        means = self._group_means(scores)
        return {name: (values - self.group_means[i]) / self.group_stds[i]
                for i, (name, values) in enumerate(means.items())}

    def _lowest_group(self, scores: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """The fused score of each clip and the name of the group that set it."""
        groups = {name: values for name, values in self.group_scores(scores).items()
                  if name not in self.unfused_groups}
        stacked = np.stack(list(groups.values()))
        names = list(groups)
        return stacked.min(axis=0), [names[i] for i in stacked.argmin(axis=0)]

    def fuse(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The lowest score of the fused groups (higher = more in-distribution)."""
        return self._lowest_group(scores)[0]

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
        fused, culprits = self._lowest_group(scores)
        p = self.fused_p_value(fused)
        per_key_p = {k: self.p_value(k, scores[k]) for k in self.fused_keys}
        results = []
        for i in range(fused.size):
            if p[i] > self.alpha:
                results.append((NORMAL, []))
                continue
            culprit = culprits[i]
            where = "group" if culprit in EVIDENCE_REASONS else "layers"
            reasons = [f"fused likelihood p={p[i]:.4f} <= {self.alpha:g}, lowest in the {culprit} {where}"]
            reasons += [f"{k} p={per_key_p[k][i]:.4f}" for k in self.fused_keys if per_key_p[k][i] <= self.alpha]
            pixels_improbable = LOW_LEVEL in self.unfused_groups and any(  # Bonferroni over its keys
                per_key_p[k][i] <= self.alpha / len(self.low_level_keys) for k in self.low_level_keys)
            if culprit == LOW_LEVEL or pixels_improbable:
                reasons.append("low-level features improbable: the pixels were tampered with (e.g. a painted frame)")
                results.append((ADVERSARIAL, reasons))
            elif culprit in EVIDENCE_REASONS:
                reasons.append(EVIDENCE_REASONS[culprit])
                unsure = culprit == "border" and softmax_max[i] < self.confident_softmax
                results.append((NOVEL if unsure else ADVERSARIAL, reasons))
            elif culprit == OUTPUT:
                reasons.append(f"no known class fits: the logits' energy is low (softmax {softmax_max[i]:.3f})")
                results.append((NOVEL, reasons))
            elif softmax_max[i] >= self.confident_softmax:
                reasons.append(f"softmax confident ({softmax_max[i]:.3f}) on improbable features")
                results.append((ADVERSARIAL, reasons))
            else:
                reasons.append(f"softmax unsure ({softmax_max[i]:.3f})")
                results.append((NOVEL, reasons))
        return fused, p, results

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"means": self.means, "stds": self.stds, "fused": self.sorted_fused, "softmax": self.sorted_softmax,
               "group_means": self.group_means, "group_stds": self.group_stds}
        out.update({f"scores/{k}": v for k, v in self.sorted_scores.items()})
        return out

    def settings(self) -> dict:
        return {"keys": self.keys, "fused_keys": self.fused_keys, "low_level_keys": self.low_level_keys,
                "output_keys": self.output_keys, "evidence_keys": self.evidence_keys, "groups": list(self.groups),
                "unfused_groups": self.unfused_groups, "alpha": self.alpha}

    @classmethod
    def from_saved(cls, settings: dict, arrays: dict[str, np.ndarray]) -> Calibration:
        keys = list(settings["keys"])
        calibration = cls(keys, arrays["means"], arrays["stds"], {k: arrays[f"scores/{k}"] for k in keys},
                   list(settings["fused_keys"]), arrays["fused"], arrays["softmax"], float(settings["alpha"]),
                   list(settings["low_level_keys"]), list(settings.get("output_keys") or ()),
                   arrays["group_means"], arrays["group_stds"], list(settings.get("evidence_keys") or ()))
        if not len(calibration.groups) == calibration.group_means.size == calibration.group_stds.size:
            raise CalibrationError(f"calibration has statistics for {calibration.group_means.size} groups, its settings "
                             f"name {len(calibration.groups)} ({', '.join(calibration.groups)})")
        calibration.unfused_groups = list(settings.get("unfused_groups") or ())
        if not set(calibration.unfused_groups) < set(calibration.groups):
            raise CalibrationError(f"unfused groups {calibration.unfused_groups} must be some of the groups "
                                   f"{list(calibration.groups)}, not all")
        return calibration
