"""Optimizer setup: weight-decay parameter groups and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn


def weight_decay_groups(model: nn.Module, extra_no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a ``weight_decay=0`` group.

    Decay only helps on weight matrices and conv kernels: norm scales/shifts and biases (every
    parameter with at most one dimension) and the names in ``extra_no_decay`` (relative-position
    tables, from ``model.no_weight_decay()``) are left undecayed. The optimizer's own
    ``weight_decay`` then applies to the first group only.
    """
    skip = set(extra_no_decay)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class WarmupCosine:
    """Learning-rate multiplier for ``LambdaLR``, evaluated once per optimizer step.

    Linear warm-up over ``warmup_steps`` (the first step already uses ``1 / warmup_steps``),
    then a half cosine from 1 down to ``min_lr_ratio`` at ``total_steps``; it stays at the
    minimum afterwards.
    """

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
