"""Adversarial framing (Zając et al. 2019, "Adversarial framing for image and video classification").

A learnable border replaces the outermost ``width`` pixels of every frame; the clip interior is never touched.
The frame is parameterised as ``sigmoid(logits)`` so it always lies in the valid pixel range, and the logits are
optimised with Adam on the cross-entropy: maximised for the true label (untargeted) or minimised for a target
label (targeted). Two modes:

* per clip (:meth:`FramingAttack.attack_batch`): a frame optimised for each clip, white-box;
* universal (:meth:`FramingAttack.fit_universal`): one frame learned over a training set with minibatches and
  epochs, then applied to any clip (:class:`AdversarialFrame`). Learned on a surrogate model it is a black-box
  attack on another model (:func:`blackbox_framing`).

With ``quantize=True`` (default) the model always sees the frame rounded to the 8-bit grid (straight-through
gradients), so the attack survives saving clips as uint8.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.attacks.common import (
    Labels,
    NormalizeFn,
    Objective,
    check_clips,
    check_labels,
    check_positive,
    frozen,
    model_objective,
    straight_through_quantize,
)
from pipeline.attacks.errors import AttackError
from pipeline.attacks.frame import REFERENCE_WIDTH, AdversarialFrame, apply_frame, border_mask

ClipData = torch.Tensor | Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FramingAttack:
    """Settings of an adversarial-framing attack.

    Args:
        width: border width in pixels (4 at 112 px in the paper; see :func:`scaled_frame_width`).
        steps: Adam steps of a per-clip attack (a universal frame takes one step per minibatch instead).
        lr: Adam learning rate on the frame logits.
        targeted: minimise the cross-entropy of given target labels instead of maximising that of the true ones.
        per_frame: learn one frame per time step (``T' = T``) rather than one shared over time (``T' = 1``).
        seed: seeds the random start of the logits and the minibatch order.
        init_std: standard deviation of the initial logits (0 starts from mid-grey).
        quantize: optimise through 8-bit rounding of the frame, so the result is exactly representable as uint8.
    """

    width: int = REFERENCE_WIDTH
    steps: int = 100
    lr: float = 0.1
    targeted: bool = False
    per_frame: bool = True
    seed: int = 0
    init_std: float = 1.0
    quantize: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise AttackError(f"FramingAttack: width must be a positive integer, got {self.width!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise AttackError(f"FramingAttack: steps must be a non-negative integer, got {self.steps!r}")
        check_positive("FramingAttack: lr", self.lr)
        check_positive("FramingAttack: init_std", self.init_std, allow_zero=True)

    def params(self) -> dict[str, object]:
        """The settings as plain JSON values (for attacked-clip metadata)."""
        return asdict(self)

    def attack_batch(
        self, model: nn.Module, clips: torch.Tensor, labels: Labels, normalize: NormalizeFn | None = None, *,
        objective: Objective | None = None,
    ) -> torch.Tensor:
        """Frame each clip against ``model``: returns pixel clips of the same shape, border replaced.

        ``labels`` are the true labels (untargeted) or the targets (targeted; an ``int`` targets one class for
        all clips). Each clip keeps the frame with the best objective seen over the steps, so more steps never
        make a clip's result worse. Clips are optimised independently (model in eval mode). ``objective``
        replaces the cross-entropy objective (minimised; :data:`~pipeline.attacks.common.Objective`).
        """
        clips = check_clips(clips)
        batch, channels, length, height, side = clips.shape
        border_mask(height, side, self.width)
        targets = check_labels(labels, batch, clips.device)
        loss = objective or model_objective(model, normalize, self.targeted)
        time = length if self.per_frame else 1
        frame_logits = self._initial_logits((batch, channels, time, height, side), clips.device)
        optimizer = torch.optim.Adam([frame_logits], lr=self.lr)
        best_pixels = torch.empty_like(frame_logits)
        best_objective = torch.full((batch,), float("inf"), device=clips.device)
        with frozen(model):
            for step in range(self.steps + 1):
                pixels = self._pixels(frame_logits)
                values = loss(apply_frame(clips, pixels, self.width), targets)
                improved = values.detach() < best_objective
                best_objective = torch.where(improved, values.detach(), best_objective)
                best_pixels[improved] = pixels.detach()[improved]
                if step == self.steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                values.sum().backward()
                optimizer.step()
        return apply_frame(clips, best_pixels, self.width)

    def fit_universal(
        self,
        model: nn.Module,
        data: ClipData,
        labels: Labels | None = None,
        normalize: NormalizeFn | None = None,
        *,
        epochs: int = 5,
        batch_size: int = 8,
        progress: bool | None = None,
        objective: Objective | None = None,
    ) -> AdversarialFrame:
        """Learn one frame that attacks every clip of ``data`` on ``model``.

        ``data`` is a pixel-clip tensor ``(N, C, T, H, W)`` with ``labels`` (``(N,)``, or one ``int`` target), or a
        re-iterable of ``(clips, labels)`` minibatches (e.g. a DataLoader; ``labels`` is then ``None`` or an
        ``int`` target that overrides the batch labels). One Adam step per minibatch on the mean objective;
        tensor data is reshuffled each epoch with the seeded generator. ``progress=None`` shows a bar on a TTY.
        ``objective`` replaces the cross-entropy objective (minimised; :data:`~pipeline.attacks.common.Objective`).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise AttackError(f"fit_universal: epochs must be a positive integer, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AttackError(f"fit_universal: batch_size must be a positive integer, got {batch_size!r}")
        source = _MinibatchSource(data, labels, batch_size, self.seed)
        channels, length, height, side = source.geometry
        border_mask(height, side, self.width)
        loss = objective or model_objective(model, normalize, self.targeted)
        frame_logits = self._initial_logits((channels, length if self.per_frame else 1, height, side), source.device)
        optimizer = torch.optim.Adam([frame_logits], lr=self.lr)
        epoch_objective = float("nan")
        disable = None if progress is None else not progress
        bar = tqdm(total=source.total(epochs), desc="universal frame", disable=disable, leave=False)
        with frozen(model), bar:
            for _ in range(epochs):
                total, count = 0.0, 0
                for batch_clips, batch_labels in source.epoch():
                    adversarial = apply_frame(batch_clips, self._pixels(frame_logits), self.width)
                    values = loss(adversarial, batch_labels)
                    optimizer.zero_grad(set_to_none=True)
                    values.mean().backward()
                    optimizer.step()
                    total += float(values.detach().sum())
                    count += len(batch_labels)
                    bar.update(1)
                epoch_objective = total / count
        info = {
            "attack": "adversarial_framing",
            "mode": "universal",
            **self.params(),
            "epochs": epochs,
            "batch_size": batch_size,
            "clips_per_epoch": count,
            "last_epoch_objective": epoch_objective,
        }
        return AdversarialFrame(self._pixels(frame_logits).detach(), self.width, info)

    def _initial_logits(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        frame_logits = torch.randn(shape, generator=generator) * self.init_std
        return frame_logits.to(device).requires_grad_(True)

    def _pixels(self, frame_logits: torch.Tensor) -> torch.Tensor:
        """Frame pixels the model sees: differentiable, and (with ``quantize``) exactly on the 8-bit grid."""
        pixels = torch.sigmoid(frame_logits)
        return straight_through_quantize(pixels) if self.quantize else pixels


def adversarial_framing(
    model: nn.Module, clips: torch.Tensor, labels: Labels, normalize: NormalizeFn | None = None, **settings: object
) -> torch.Tensor:
    """Per-clip adversarial framing in one call: ``FramingAttack(**settings).attack_batch(...)``."""
    return FramingAttack(**settings).attack_batch(model, clips, labels, normalize)  # type: ignore[arg-type]


def blackbox_framing(
    surrogate: nn.Module,
    clips: torch.Tensor,
    labels: Labels,
    normalize: NormalizeFn | None = None,
    *,
    attack: FramingAttack | None = None,
    universal: bool = True,
    train_clips: torch.Tensor | None = None,
    train_labels: Labels | None = None,
    epochs: int = 5,
    batch_size: int = 8,
) -> torch.Tensor:
    """Frames learned on a ``surrogate`` model, applied to ``clips`` destined for an unseen target model.

    Universal (default): one frame is fitted on ``train_clips``/``train_labels`` (default: ``clips``/``labels``)
    through the surrogate and applied to ``clips``. Per clip (``universal=False``): each clip is framed against
    the surrogate. ``normalize`` is the surrogate's; the result is pixel clips, ready for any target model.
    """
    attack = attack or FramingAttack()
    if not universal:
        return attack.attack_batch(surrogate, clips, labels, normalize)
    if (train_clips is None) != (train_labels is None):
        raise AttackError("blackbox_framing: give both train_clips and train_labels, or neither")
    fit_clips, fit_labels = (clips, labels) if train_clips is None else (train_clips, train_labels)
    frame = attack.fit_universal(surrogate, fit_clips, fit_labels, normalize, epochs=epochs, batch_size=batch_size)
    return frame.apply(clips)


class _MinibatchSource:
    """Minibatches of validated pixel clips and labels from a tensor (seeded shuffle) or a re-iterable loader."""

    def __init__(self, data: ClipData, labels: Labels | None, batch_size: int, seed: int) -> None:
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.target = labels if isinstance(labels, int) and not isinstance(labels, bool) else None
        self.geometry: tuple[int, ...] | None = None
        self.loader: Iterable[tuple[torch.Tensor, torch.Tensor]] = ()
        self.clips: torch.Tensor | None = None
        if isinstance(data, torch.Tensor):
            if labels is None:
                raise AttackError("fit_universal: labels are required when data is a tensor of clips")
            self.clips = check_clips(data, "universal-frame training clips")
            self.labels = check_labels(labels, len(self.clips), self.clips.device)
            first = self.clips
        else:
            if labels is not None and self.target is None:
                raise AttackError("fit_universal: with a loader, labels must be None or one int target")
            if iter(data) is data:
                raise AttackError("fit_universal: data must be re-iterable for several epochs (a DataLoader, a list)")
            self.loader = data
            first = next(self._loader_batches(), (None, None))[0]
            if first is None:
                raise AttackError("fit_universal: the loader yielded no batches")
        self.geometry = tuple(first.shape[1:])
        self.device = first.device

    def total(self, epochs: int) -> int | None:
        if self.clips is not None:
            return epochs * -(-len(self.clips) // self.batch_size)
        length = getattr(self.loader, "__len__", None)
        return epochs * length() if length is not None else None

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.clips is None:
            yield from self._loader_batches()
            return
        order = torch.randperm(len(self.clips), generator=self.generator).to(self.clips.device)
        for index in order.split(self.batch_size):
            yield self.clips[index], self.labels[index]

    def _loader_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for item in self.loader:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise AttackError("fit_universal: each loader item must be a (clips, labels) pair")
            clips = check_clips(item[0], "universal-frame training batch")
            if self.geometry is not None and tuple(clips.shape[1:]) != self.geometry:
                raise AttackError(
                    f"fit_universal: batch of shape {tuple(clips.shape)} differs from the first, {self.geometry}"
                )
            labels = self.target if self.target is not None else item[1]
            yield clips, check_labels(labels, len(clips), clips.device)
