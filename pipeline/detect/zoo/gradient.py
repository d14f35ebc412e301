"""Backpropagated gradients as novelty features (Kwon, Prabhushankar, Temel & AlRegib, ICIP / ECCV 2020, "GradCon").

For each clip ``x`` the detector backpropagates a loss from the logits ``z = f(x)`` to the weights ``W_l`` of a few
layers and summarises each layer's gradient ``g_l = dL / dW_l`` by two numbers: how large it is (how much the model
would have to change to learn the clip) and how well it aligns with the mean training gradient (GradCon's gradient
constraint: in-distribution clips ask for updates in the direction the training data asks for). The loss is

* ``target="prediction"`` (default): the cross-entropy at the model's own predicted label,
  ``L = -log softmax(z)_{argmax z} = -max_c log softmax(z)_c``;
* ``target="uniform"``: the cross-entropy to the uniform distribution, ``L = -(1/C) sum_c log softmax(z)_c``
  (GradNorm's ``KL(u || softmax(z))`` up to a constant, so the same gradient).

Per layer ``l``, with ``g_l`` flattened and every summary computed in float64:

* ``a_l = log ||g_l||_2`` (a norm below 1e-30 is taken as 1e-30), or ``||g_l||_2`` with ``log_norm=False``;
* ``c_l = cos(g_l, m_l) = <g_l, m_l> / (||g_l|| ||m_l||)`` (0 when either is 0), ``m_l`` the mean training
  gradient of layer ``l``.

Score (HIGHER = more in-distribution)::

    S(x) = sum_l [ (c_l - mu_c,l) / sd_c,l  -  s (a_l - mu_a,l) / sd_a,l ] / sd_S

with ``s = +1`` for ``target="prediction"`` (a large gradient at the prediction asks for a large update: novel, as
in GradCon) and ``s = -1`` for ``target="uniform"`` (a large gradient toward the uniform distribution means a
confident clip: in-distribution, as in GradNorm; with ``s = +1`` this variant would score confidence backwards).
``mu`` and ``sd`` are the mean and standard deviation of each summary over the training clips and ``sd_S`` the
standard deviation of the bracketed sum over them, computed exactly from the training summaries' covariance (the
sum's training mean is 0), so ``S`` is a z-score: 0 for a typical training clip, negative for a clip whose gradients
are larger or less aligned than the training clips'. A training clip's own cosine is taken to the mean of the
*other* training gradients (leave-one-out, ``m_l ~ G_l - g_l`` with ``G_l`` the sum over all training clips): with
the clip in the mean, its cosine would be inflated by its own contribution, and test clips would look atypical.

Fitting reads the training clips twice (``fit_clips``): the first pass sums the per-clip gradients (``G_l``), the
second computes each clip's summaries and accumulates their sums and cross-products; no per-clip gradient is kept
beyond its batch. Per-clip gradients come from ``torch.func`` (``vmap`` of ``grad`` through ``functional_call``, the
model in eval mode so batch norm uses its running statistics), or, where ``vmap`` cannot run the model (a model
prepared for bf16 converts its input to channels-last-3d in a forward pre-hook, which ``vmap`` does not support), one
backward pass per clip. Either way only the chosen weights are differentiated and nothing else records a graph.

Usage, like ODIN, with clips in the attacks' pixel space (``(N, 3, T, H, W)`` floats in ``[0, 1]``)::

    detector = GradientDetector().fit_clips(model, train_clips, normalize)   # or a callable yielding batches
    scores = detector.score_clips(model, clips, normalize)                   # (N,) float64
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.conv import _ConvNd

from pipeline.detect.features import ClipFeatures, model_device
from pipeline.detect.zoo.base import ZooDetector, ZooError, check_positive, clip_batches

log = logging.getLogger(__name__)

TARGETS = ("prediction", "uniform")
PER_SAMPLE = ("auto", "vmap", "loop")
NORM_FLOOR = 1e-30
"""Gradient norms below this are taken as this before the log (a clip predicted with certainty in float32)."""


def default_gradient_layers(model: nn.Module) -> tuple[str, ...]:
    """The weights of the last convolution and of the last ``nn.Linear`` registered in ``model``: the last conv
    block's last convolution and the classifier head (``layer4.1.conv2.weight`` and ``fc.weight`` for r3d-18,
    ``layer4.2.conv3.weight`` for r3d-50, ``conv5b.weight`` and ``fc8.weight`` for C3D). A residual block's
    projection shortcut (a module named ``downsample`` or ``shortcut``, registered after the block's convolutions)
    is passed over unless the model has no other convolution."""
    conv = shortcut = linear = None
    for name, module in model.named_modules():
        if isinstance(module, _ConvNd) and isinstance(getattr(module, "weight", None), nn.Parameter):
            if {"downsample", "shortcut"} & set(name.split(".")):
                shortcut = f"{name}.weight"
            else:
                conv = f"{name}.weight"
        elif isinstance(module, nn.Linear):
            linear = f"{name}.weight"
    layers = tuple(name for name in (conv or shortcut, linear) if name is not None)
    if not layers:
        raise ZooError(f"gradient: {type(model).__name__} has no convolution or nn.Linear weight; pass layers=")
    return layers


class GradientDetector(ZooDetector):
    """GradCon-style gradient features: per chosen weight, the gradient's norm and its cosine to the mean training
    gradient, z-scored with training statistics and summed (see the module's docstring for the exact formula).

    ``layers``: parameter names (``model.named_parameters()``), default :func:`default_gradient_layers`.
    ``target``: ``"prediction"`` or ``"uniform"``. ``log_norm``: z-score the log of the norm (default) or the norm.
    ``per_sample``: ``"auto"`` (``vmap``, falling back to a loop), ``"vmap"`` or ``"loop"``.
    """

    name = "gradient"
    needs_clips = True
    needs_training_clips = True

    def __init__(self, layers: tuple[str, ...] | None = None, target: str = "prediction", log_norm: bool = True,
                 batch_size: int = 16, per_sample: str = "auto"):
        self.layers = layers
        self.target = target
        self.log_norm = log_norm
        self.batch_size = batch_size
        self.per_sample = per_sample

    @property
    def layer_used(self) -> str:
        layers = getattr(self, "layers_", None) or tuple(self.layers or ())
        return "+".join(name.removesuffix(".weight") for name in layers) if layers else "weights"

    def _validate(self) -> None:
        if self.layers is not None and (isinstance(self.layers, str) or not len(self.layers)
                                        or not all(isinstance(n, str) and n for n in self.layers)):
            raise ZooError(f"{self.name}: layers must be a non-empty sequence of parameter names or None, got "
                           f"{self.layers!r}")
        if self.target not in TARGETS:
            raise ZooError(f"{self.name}: target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.per_sample not in PER_SAMPLE:
            raise ZooError(f"{self.name}: per_sample must be one of {', '.join(PER_SAMPLE)}, got {self.per_sample!r}")
        if not isinstance(self.log_norm, bool):
            raise ZooError(f"{self.name}: log_norm must be True or False, got {self.log_norm!r}")
        check_positive(self.name, "batch_size", self.batch_size, integer=True)

    def _score(self, features: ClipFeatures) -> np.ndarray:
        raise ZooError(f"{self.name} scores pixels: call score_clips(model, clips, normalize)")

    # -- fitting ---------------------------------------------------------------------------------------------------

    def fit_clips(self, model: nn.Module, clips: torch.Tensor | Callable[[], Iterable[torch.Tensor]],
                  normalize: Callable[[torch.Tensor], torch.Tensor]) -> GradientDetector:
        """Fit on in-distribution training clips: ``(N, 3, T, H, W)`` pixels in ``[0, 1]``, or a callable returning
        an iterable of such batches (called twice, once per pass, so that they need not all be in memory)."""
        self._validate()
        self._check_model(model)
        layers = tuple(self.layers) if self.layers is not None else default_gradient_layers(model)
        parameters = dict(model.named_parameters())
        for name in layers:
            if name not in parameters:
                close = difflib.get_close_matches(name, list(parameters), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ZooError(f"{self.name}: {type(model).__name__} has no parameter {name!r}{hint}")
        if len(set(layers)) != len(layers):
            raise ZooError(f"{self.name}: layers named twice in {layers!r}")
        self.layers_ = layers
        device = model_device(model)

        sums = {name: torch.zeros(parameters[name].numel(), dtype=torch.float64, device=device) for name in layers}
        count = 0
        for batch in self._batches(clips):  # pass 1: the sum of the training gradients per layer
            gradients, n_classes = self._gradients(model, batch, normalize)
            self.n_classes_ = n_classes
            for name in layers:
                sums[name] += gradients[name].sum(dim=0)
            count += len(batch)
        if count < 2:
            raise ZooError(f"{self.name}: at least 2 training clips are needed, got {count}")

        k = 2 * len(layers)
        first, second, seen = np.zeros(k), np.zeros((k, k)), 0
        for batch in self._batches(clips):  # pass 2: summaries, each cosine to the mean of the other clips
            gradients, _ = self._gradients(model, batch, normalize)
            summary = self._summaries(gradients, {name: sums[name][None] - gradients[name] for name in layers})
            first += summary.sum(axis=0)
            second += summary.T @ summary
            seen += len(summary)
        if seen != count:
            raise ZooError(f"{self.name}: the training clips changed between the two passes ({count}, then {seen})")

        mean = first / count
        covariance = (second - count * np.outer(mean, mean)) / (count - 1)
        std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        std = np.where(std > 1e-12, std, 1.0)
        weights = np.r_[self._norm_sign * np.ones(len(layers)), np.ones(len(layers))] / std  # +-z(norm), +z(cos)
        score_variance = float(weights @ covariance @ weights)
        self.mean_gradients_ = {name: (sums[name] / count).cpu().numpy() for name in layers}
        self.shapes_ = {name: tuple(parameters[name].shape) for name in layers}
        self.summary_mean_, self.summary_std_ = mean, std
        self.score_std_ = float(np.sqrt(score_variance)) if score_variance > 1e-24 else 1.0
        self.n_train_clips_ = count
        return self

    # -- scoring ---------------------------------------------------------------------------------------------------

    def summaries(self, model: nn.Module, clips: torch.Tensor,
                  normalize: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, np.ndarray]:
        """Per clip, float64: ``{"norm:<layer>": a_l, "cosine:<layer>": c_l}`` (``a_l`` the log norm by default)."""
        self._check_fitted(model)
        parts = []
        for batch in self._batches(clips):
            gradients, n_classes = self._gradients(model, batch, normalize)
            if n_classes != self.n_classes_:
                raise ZooError(f"{self.name}: the model has {n_classes} classes, fitted with {self.n_classes_}")
            device = next(iter(gradients.values())).device
            means = {name: torch.as_tensor(self.mean_gradients_[name], device=device)[None] for name in self.layers_}
            parts.append(self._summaries(gradients, means))
        values = np.concatenate(parts) if parts else np.zeros((0, 2 * len(self.layers_)))
        n = len(self.layers_)
        return {**{f"norm:{name}": values[:, i] for i, name in enumerate(self.layers_)},
                **{f"cosine:{name}": values[:, n + i] for i, name in enumerate(self.layers_)}}

    def score_clips(self, model: nn.Module, clips: torch.Tensor,
                    normalize: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """Scores ``(N,)`` of pixel clips ``(N, 3, T, H, W)`` in ``[0, 1]``; ``model`` in eval mode."""
        values = self.summaries(model, clips, normalize)
        stacked = np.stack([values[f"norm:{n}"] for n in self.layers_] + [values[f"cosine:{n}"] for n in self.layers_],
                           axis=1)
        z = (stacked - self.summary_mean_) / self.summary_std_
        n = len(self.layers_)
        return (z[:, n:].sum(axis=1) + self._norm_sign * z[:, :n].sum(axis=1)) / self.score_std_

    @property
    def _norm_sign(self) -> float:
        """-1: a large gradient at the prediction is novel (GradCon); +1: a large gradient toward the uniform
        distribution is in-distribution (GradNorm: confident clips are far from uniform)."""
        return -1.0 if self.target == "prediction" else 1.0

    # -- internals -------------------------------------------------------------------------------------------------

    def _check_model(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ZooError(f"{self.name}: model must be a torch module, got {type(model).__name__}")
        if model.training:
            raise ZooError(f"{self.name}: put the model in eval() mode first (batch norm would learn from the clips)")

    def _check_fitted(self, model: nn.Module) -> None:
        if not hasattr(self, "mean_gradients_"):
            raise ZooError(f"{self.name} is not fitted: call fit_clips(model, train_clips, normalize) first")
        self._check_model(model)
        parameters = dict(model.named_parameters())
        for name, shape in self.shapes_.items():
            if name not in parameters or tuple(parameters[name].shape) != shape:
                raise ZooError(f"{self.name}: the model has no parameter {name!r} of shape {shape} (fitted on "
                               f"another model)")

    def _batches(self, clips) -> Iterator[torch.Tensor]:
        return clip_batches(self.name, clips, self.batch_size)

    def _loss(self, logits: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        return -log_probs.max() if self.target == "prediction" else -log_probs.mean()

    def _gradients(self, model: nn.Module, batch: torch.Tensor, normalize
                   ) -> tuple[dict[str, torch.Tensor], int]:
        """Per-clip gradients ``{layer: (B, D) float64}`` on the model's device, and the number of classes."""
        inputs = normalize(batch.detach().to(model_device(model), torch.float32))
        parameters = dict(model.named_parameters())
        if self.per_sample != "loop":
            try:
                return self._vmap_gradients(model, parameters, inputs)
            except RuntimeError as exc:  # e.g. a forward pre-hook that vmap cannot batch
                if self.per_sample == "vmap":
                    raise ZooError(f"{self.name}: vmap cannot run this model ({str(exc).splitlines()[0]}); "
                                   "use per_sample='loop'") from exc
                log.debug("gradient: vmap failed (%s), one backward pass per clip", str(exc).splitlines()[0])
        return self._loop_gradients(model, parameters, inputs)

    def _vmap_gradients(self, model, parameters, inputs):
        chosen = {name: parameters[name].detach() for name in self.layers_}
        n_classes = []

        def loss(weights, clip):
            logits = functional_call(model, weights, (clip[None],))
            n_classes.append(logits.shape[-1])
            return self._loss(logits)

        with torch.no_grad():  # only the chosen weights are differentiated (torch.func ignores the outer no_grad)
            gradients = vmap(grad(loss), in_dims=(None, 0))(chosen, inputs)
        return {name: g.reshape(len(inputs), -1).double() for name, g in gradients.items()}, n_classes[0]

    def _loop_gradients(self, model, parameters, inputs):
        weights = {name: p.detach() for name, p in parameters.items()}
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers_}
        n_classes = 0
        for clip in inputs:
            chosen = {name: weights[name].clone().requires_grad_(True) for name in self.layers_}
            with torch.enable_grad():
                logits = functional_call(model, {**weights, **chosen}, (clip[None],))
                gradients = torch.autograd.grad(self._loss(logits), list(chosen.values()))
            n_classes = logits.shape[-1]
            for name, g in zip(self.layers_, gradients, strict=True):
                parts[name].append(g.reshape(-1).double())
        return {name: torch.stack(values) for name, values in parts.items()}, n_classes

    def _summaries(self, gradients: dict[str, torch.Tensor], references: dict[str, torch.Tensor]) -> np.ndarray:
        """``(B, 2L)`` float64: per layer the (log) norm of each gradient, then its cosine to its reference row."""
        norms, cosines = [], []
        for name in self.layers_:
            g, reference = gradients[name], references[name]
            norm, reference_norm = g.norm(dim=1), reference.norm(dim=1)
            denominator = norm * reference_norm
            dot = (g * reference).sum(dim=1)
            cosines.append(torch.where(denominator > 0, dot / denominator.clamp_min(1e-300), 0.0))
            norms.append(norm.clamp_min(NORM_FLOOR).log() if self.log_norm else norm)
        return torch.stack(norms + cosines, dim=1).cpu().numpy()
