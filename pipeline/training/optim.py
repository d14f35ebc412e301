"""Optimizer with weight decay only on conv/linear weights, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.training.config import TrainConfig
from pipeline.training.errors import TrainingError
from pipeline.training.transfer import head_name


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over decayed weights (ndim > 1) and undecayed BN parameters and biases.

    With ``backbone_lr_ratio`` below 1 the backbone gets its own two groups at that fraction of the learning rate
    (their ``lr_scale``); a zero ratio freezes it, BatchNorm running statistics included, and ``freeze_through``
    freezes the modules up to that one the same way. At ratio 1 there are two groups, the layout of checkpoints
    written before the ratio existed, so they still resume."""
    head = head_name(model)
    ratio = config.backbone_lr_ratio
    if config.freeze_through is not None:
        freeze_through(model, config.freeze_through)
    parts = [(1.0, [p for p in model.parameters() if p.requires_grad])]
    if ratio != 1:
        in_head = {id(p) for name, p in model.named_parameters() if name.startswith(f"{head}.")}
        backbone = [p for p in parts[0][1] if id(p) not in in_head]
        parts = [(ratio, backbone), (1.0, [p for p in parts[0][1] if id(p) in in_head])]
    if ratio == 0:
        for parameter in parts[0][1]:
            parameter.requires_grad_(False)
        for name, module in model.named_modules():
            if name != head and not name.startswith(f"{head}.") and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0  # running statistics stay those of the initialisation
        parts = parts[1:]
    groups = []
    for scale, params in parts:
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay,
                    "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def frozen_modules(model: nn.Module, name: str) -> list[str]:
    """Names of the modules registered up to and including ``name``'s subtree, in order (one-line TrainingError
    if the model has no such module or if it holds the head)."""
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        tops = ", ".join(n for n, _ in model.named_children())
        raise TrainingError(f"freeze_through: {type(model).__name__} has no module {name!r} (top-level: {tops})")
    last = max(i for i, n in enumerate(names) if n == name or n.startswith(f"{name}."))
    frozen = names[: last + 1]
    head = head_name(model)
    if head in frozen:
        raise TrainingError(f"freeze_through: {name!r} would freeze the head {head!r}, which must train")
    return frozen


def freeze_through(model: nn.Module, name: str) -> None:
    """Freeze every module up to and including ``name``: no gradients, BatchNorm running statistics kept."""
    frozen = frozen_modules(model, name)
    for module_name in frozen:
        module = model.get_submodule(module_name)
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0


def learning_rate(step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up to ``lr``, cosine decay to the floor."""
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
