"""Factor losses: extra cross-entropies on groups of classes, for datasets whose classes combine several factors.

The pretraining corpus's 81 classes each combine a translation, a rotation and a scale change
(``pipeline.data.pretrain``). With the 81-way cross-entropy alone, a clip of ``T045RcwSgrow`` teaches the network
nothing about its direction when it is mistaken for ``T045RccwSnone``: the classes that share two of its three
motions are pushed down as hard as the rest, and on two CPU cores the network never leaves chance. Each factor
``f`` adds the cross-entropy of the class probabilities summed within ``f``'s values,
``-log sum_{c: f(c) = f(y)} softmax(z)_c``, so every clip also teaches each motion on its own; the head stays one
81-way classifier, so nothing downstream changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pipeline.training.errors import TrainingError


class FactorLoss:
    """``sum_f CE(marginal_f(softmax(logits)), f(labels))`` for factor tables ``{factor: {class: value}}``."""

    def __init__(self, factors: Mapping[str, Mapping[str, str]], classes: Sequence[str]) -> None:
        self.groupings: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, table in factors.items():
            missing = [c for c in classes if c not in table]
            if missing:
                raise TrainingError(f"factor {name!r} gives no value for class {missing[0]!r} "
                                    f"({len(missing)} of {len(classes)} classes)")
            values = sorted({table[c] for c in classes})
            of_class = torch.tensor([values.index(table[c]) for c in classes], dtype=torch.int64)
            membership = torch.nn.functional.one_hot(of_class, len(values)).to(torch.float32)  # (C, V)
            self.groupings.append((of_class, membership))

    def __bool__(self) -> bool:
        return bool(self.groupings)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits.float(), dim=1)
        total = logits.new_zeros((), dtype=torch.float32)
        for of_class, membership in self.groupings:
            marginal = probabilities @ membership.to(logits.device)
            target = of_class.to(labels.device)[labels]
            total = total + torch.nn.functional.nll_loss(torch.log(marginal.clamp_min(1e-12)), target)
        return total
