"""Optimizer with weight decay only on conv/linear weights, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.training.config import TrainConfig
from pipeline.training.transfer import head_name


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over decayed weights (ndim > 1) and undecayed BN parameters and biases, the
    backbone's groups at ``backbone_lr_ratio`` of the learning rate (their ``lr_scale``); a zero ratio freezes it."""
    head = head_name(model)
    groups = []
    for is_head in (False, True):
        scale = 1.0 if is_head else config.backbone_lr_ratio
        params = [p for name, p in model.named_parameters()
                  if p.requires_grad and name.startswith(f"{head}.") == is_head]
        if scale == 0:
            for parameter in params:
                parameter.requires_grad_(False)
            continue
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay,
                    "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


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
