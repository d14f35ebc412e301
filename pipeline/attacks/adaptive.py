"""Adaptive attacks: the attacker knows the detector and adds its score to the loss (Carlini & Wagner 2017).

Every attack here minimises, per pixel clip ``x'`` in ``[0, 1]``, with ``f`` the classifier's logits::

    J(x') = attack_objective(f(x'), y) - lam * fused(x')
          = -CE(f(x'), y) - lam * fused(x')          untargeted (y the true label)
          = +CE(f(x'), t) - lam * fused(x')          targeted (t the target)

or, with ``loss="margin"``, Carlini & Wagner's margin in place of the cross-entropy::

    margin(f(x'), y) = max(f(x')_y - max_{i != y} f(x')_i, -kappa)     untargeted
                     = max(max_{i != t} f(x')_i - f(x')_t, -kappa)     targeted

(once the clip is misclassified by ``kappa`` logits, only the detector term is left to push on), i.e. it
maximises the misclassification loss plus ``lam`` times the bundle's fused score (higher = more
in-distribution): the clip is pushed to fool the classifier *and* to look typical to the detector. ``fused`` is
:class:`~pipeline.detect.torch_scoring.TorchBundleScorer`'s differentiable copy of ``DetectorBundle.score``'s
fused score, in standard deviations of calibration clips; ``lam`` trades nats of cross-entropy for them.
``lam = 0`` is the plain attack exactly: the detector is not evaluated, and the result is bit-identical to
:func:`~pipeline.attacks.pgd` / :class:`~pipeline.attacks.FramingAttack` with the same settings and seed.

Where the gradient is exact, and where not:

* the detector term is exact from the pixels to the fused score (float64 after the model's float32 forward),
  except that the minimum over groups and the maximum over classes pass the gradient to the lowest group and the
  most likely class only;
* PGD optimises in float and rounds afterwards (``quantize=True``: the nearest 8-bit values inside the ε-ball).
  The rounding is not differentiable and the optimisation never sees it, so a stored clip's fused score differs
  a little from the one the attack reached (``clipwatch evaluate`` reports both);
* framing sees its frame rounded to 8 bits in the forward pass with a straight-through (identity) gradient, so
  the stored frame is exactly the one optimised, but the gradient through the rounding is an approximation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pipeline.attacks.common import Labels, attack_objective, check_positive, model_objective
from pipeline.attacks.errors import AttackError
from pipeline.attacks.frame import AdversarialFrame
from pipeline.attacks.framing import FramingAttack
from pipeline.attacks.gradient import pgd
from pipeline.detect.torch_scoring import TorchBundleScorer

ATTACK_LOSSES = ("ce", "margin")


def margin_objective(logits: torch.Tensor, labels: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """Carlini & Wagner's margin per clip, to minimise (see the module docstring)."""
    chosen = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    best_other = others.max(dim=1).values
    margin = best_other - chosen if targeted else chosen - best_other
    return margin.clamp(min=-kappa)


class DetectorAwareObjective:
    """``J(x') = loss(f(x'), y) - lam * fused(x')`` per clip (to minimise; float64 when ``lam > 0``); ``loss`` is
    ``"ce"`` (:func:`attack_objective`) or ``"margin"`` (:func:`margin_objective` with ``kappa``)."""

    def __init__(self, scorer: TorchBundleScorer, lam: float, *, targeted: bool = False, loss: str = "ce",
                 kappa: float = 0.0) -> None:
        check_positive("lambda", lam, allow_zero=True)
        check_positive("kappa", kappa, allow_zero=True)
        if loss not in ATTACK_LOSSES:
            raise AttackError(f"attack loss must be one of {', '.join(ATTACK_LOSSES)}, got {loss!r}")
        self.scorer = scorer
        self.lam = float(lam)
        self.targeted = targeted
        self.loss, self.kappa = loss, float(kappa)
        self._plain = model_objective(scorer.model, scorer.normalize, targeted)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "margin":
            return margin_objective(logits, labels, self.targeted, self.kappa)
        return attack_objective(logits, labels, self.targeted)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.lam == 0.0:
            if self.loss == "ce":
                return self._plain(pixels, labels)
            return self._loss(self.scorer.model(self.scorer.normalize(pixels)), labels)
        scores = self.scorer(pixels)
        return self._loss(scores.logits, labels).double() - self.lam * scores.fused


def pgd_adaptive(
    scorer: TorchBundleScorer,
    clips: torch.Tensor,
    labels: Labels,
    *,
    lam: float,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    seed: int = 0,
    targeted: bool = False,
    quantize: bool = True,
    loss: str = "ce",
    kappa: float = 0.0,
) -> torch.Tensor:
    """L∞ PGD on ``J`` against the scorer's model and detector: the arguments of :func:`~pipeline.attacks.pgd`,
    and the attack ``loss`` (``ce`` or ``margin`` with ``kappa``)."""
    objective = DetectorAwareObjective(scorer, lam, targeted=targeted, loss=loss, kappa=kappa)
    return pgd(scorer.model, clips, labels, scorer.normalize, eps=eps, step_size=step_size, steps=steps,
               random_start=random_start, seed=seed, targeted=targeted, quantize=quantize, objective=objective)


def framing_adaptive(
    scorer: TorchBundleScorer, clips: torch.Tensor, labels: Labels, *, lam: float, attack: FramingAttack | None = None,
    loss: str = "ce", kappa: float = 0.0,
) -> torch.Tensor:
    """A white-box frame per clip (``attack``'s settings, default :class:`FramingAttack`) minimising ``J``."""
    attack = attack or FramingAttack()
    objective = DetectorAwareObjective(scorer, lam, targeted=attack.targeted, loss=loss, kappa=kappa)
    return attack.attack_batch(scorer.model, clips, labels, scorer.normalize, objective=objective)


def framing_adaptive_universal(
    scorer: TorchBundleScorer,
    data: torch.Tensor | Iterable[tuple[torch.Tensor, torch.Tensor]],
    labels: Labels | None = None,
    *,
    lam: float,
    attack: FramingAttack | None = None,
    epochs: int = 5,
    batch_size: int = 8,
    progress: bool | None = None,
) -> AdversarialFrame:
    """One frame minimising the mean ``J`` over ``data`` (as :meth:`FramingAttack.fit_universal` takes it)."""
    attack = attack or FramingAttack()
    objective = DetectorAwareObjective(scorer, lam, targeted=attack.targeted)
    frame = attack.fit_universal(scorer.model, data, labels, scorer.normalize, epochs=epochs, batch_size=batch_size,
                                 progress=progress, objective=objective)
    return AdversarialFrame(frame.pixels, frame.width, {**frame.info, "attack": "adaptive_framing", "lambda": lam})
