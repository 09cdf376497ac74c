"""The optimizer (new layers at head_lr_mult, no decay on norms and biases) and the lr schedule."""

from __future__ import annotations

import math

import torch

from pipeline.config.train import TrainConfig
from pipeline.lio import LIOModel


def build_optimizer(t: TrainConfig, model: LIOModel) -> torch.optim.Optimizer:
    """Backbone at train.lr; new layers (heads, classifier) at lr * head_lr_mult; no decay on norms and biases."""
    new = {id(p) for p in [*model.head_parameters(), *model.backbone.get_submodule("fc").parameters()]}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        groups.setdefault((id(p) in new, p.ndim <= 1), []).append(p)
    param_groups = [
        {
            "params": ps,
            "lr": t.lr * (t.head_lr_mult if is_new else 1.0),
            "weight_decay": 0.0 if flat else t.weight_decay,
        }
        for (is_new, flat), ps in sorted(groups.items())
    ]
    # fused: one kernel over every tensor instead of a Python loop over 160 of them (AdamW's step on a
    # 2-core CPU: 12 ms against 69 ms, docs/measured-log.md); CPU and CUDA both have it
    if t.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=t.lr, momentum=t.momentum, nesterov=True, fused=True)
    return torch.optim.AdamW(param_groups, lr=t.lr, fused=True)


def lr_lambda(t: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero or step decay at train.step_epochs."""
    warmup = t.warmup_epochs * steps_per_epoch
    total = t.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        return t.step_gamma ** sum(step >= m * steps_per_epoch for m in t.step_epochs)

    return factor
