"""Optimizer setup: weight-decay parameter groups and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# Prefixes that wrappers (FSDP, activation checkpointing, torch.compile) insert into parameter names.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """A parameter name as the unwrapped model reports it."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def no_decay_names(model: nn.Module, extra: Iterable[str] = ()) -> set[str]:
    """Names of parameters that should not be decayed.

    Decay only helps on weight matrices and conv kernels: norm scales/shifts and biases (every
    parameter with at most one dimension) and the names in ``extra`` (relative-position tables,
    from ``model.no_weight_decay()``) are excluded. Call it on the unwrapped model: FSDP shards
    parameters into flat pieces whose shapes no longer tell.
    """
    names = {canonical_name(n) for n, p in model.named_parameters() if p.ndim <= 1}
    return names | {canonical_name(n) for n in extra}


def weight_decay_groups(model: nn.Module, no_decay: set[str]) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group and a ``weight_decay=0`` group.

    ``no_decay`` holds names from :func:`no_decay_names`; names are matched after removing
    wrapper prefixes, so this works on a model already wrapped by FSDP or checkpointing. The
    optimizer's own ``weight_decay`` then applies to the first group only. Each group's ``name`` is
    its tag under ``lr/`` in the logs (``LearningRateMonitor``).
    """
    decay, skip = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (skip if canonical_name(name) in no_decay else decay).append(param)
    return [{"params": decay, "name": "decay"}, {"params": skip, "weight_decay": 0.0, "name": "no_decay"}]


def layer_name(layer: int, depths: Sequence[int]) -> str:
    """``stem``, ``block1`` ... ``blockN`` (in forward order over all stages) or ``head``, for a :func:`layer_index`."""
    if layer == 0:
        return "stem"
    return "head" if layer == sum(depths) + 1 else f"block{layer}"


def layer_index(name: str, depths: Sequence[int]) -> int:
    """Depth of a CoAtNet parameter: 0 for the stem, 1..sum(depths) for the blocks in order, then the head."""
    parts = canonical_name(name).split(".")
    if parts[0] == "stem":
        return 0
    if parts[0] == "stages" and len(parts) > 2 and parts[1].isdigit() and parts[2].isdigit():
        return 1 + sum(depths[: int(parts[1])]) + int(parts[2])
    if parts[0] == "head":
        return sum(depths) + 1
    raise ValueError(f"layer_decay needs CoAtNet parameter names (stem., stages.S.B., head.), got {name!r}")


def layer_decay_groups(
    model: nn.Module, no_decay: set[str], depths: Sequence[int], layer_decay: float
) -> list[dict[str, Any]]:
    """Like :func:`weight_decay_groups`, split further per layer, each with ``lr_scale = layer_decay ** k``
    for the layer k steps below the head (layer-wise learning-rate decay for fine-tuning, as in BEiT).

    Groups come head first, so the first group carries the unscaled learning rate. They are named
    after their layer (``head``, ``block12``, ..., ``stem``; ``_no_decay`` for the ``weight_decay=0`` part),
    so the logs show each one's learning rate as ``lr/<name>``.
    """
    head = sum(depths) + 1
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (layer_index(name, depths), canonical_name(name) in no_decay)
            buckets.setdefault(key, []).append(param)
    groups = []
    for (layer, skip), params in sorted(buckets.items(), key=lambda item: (-item[0][0], item[0][1])):
        name = layer_name(layer, depths) + ("_no_decay" if skip else "")
        group: dict[str, Any] = {"params": params, "lr_scale": layer_decay ** (head - layer), "name": name}
        if skip:
            group["weight_decay"] = 0.0
        groups.append(group)
    return groups


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


class SharedOnCopy:
    """The optimizer factory, called as it is, but shared instead of copied by ``copy.deepcopy``.

    EMA's averaged model is a deep copy of the LightningModule. jsonargparse binds the factory to the CLI, so
    copying it would also copy the trainer and the DataModule with its data and its process-shared counters
    (which refuse to be copied).
    """

    def __init__(self, factory: Callable[..., torch.optim.Optimizer]) -> None:
        self.factory = factory

    def __call__(self, params: Any) -> torch.optim.Optimizer:
        return self.factory(params)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedOnCopy:
        return self


def check_clipping_is_possible(trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
    """Lightning refuses to clip gradients for optimizers that unscale them in their own step (the fused ones)
    under any mixed precision, bf16 included; say so before training starts, with the fix."""
    mixed = "mixed" in str(trainer.precision)
    if mixed and trainer.gradient_clip_val and getattr(optimizer, "_step_supports_amp_scaling", False):
        raise ValueError(
            f"fused {type(optimizer).__name__} cannot be combined with {trainer.precision} and gradient "
            "clipping in Lightning: set model.optimizer.init_args.fused false (the default), use "
            "trainer.precision 32-true, or drop trainer.gradient_clip_val"
        )


def total_optimizer_steps(trainer: Trainer) -> int:
    """The optimizer steps of the whole run, which the schedule spans; a readable error where there is no such
    number (Lightning would divide by ``accumulate_grad_batches`` 0, or return infinity)."""
    if trainer.accumulate_grad_batches < 1:
        raise ValueError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} is out of range: allowed >= 1 "
            "(batches per optimizer step; 1 accumulates nothing)"
        )
    total_steps = trainer.estimated_stepping_batches
    if not math.isfinite(total_steps):
        raise ValueError("The cosine schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
    return int(total_steps)


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, trainer: Trainer, warmup_steps: int, min_lr_ratio: float
) -> dict[str, Any]:
    """``WarmupCosine`` over the whole run as Lightning's per-step ``lr_scheduler`` entry, named ``lr`` for the
    ``LearningRateMonitor``. Each group's ``lr_scale`` (layer decay) is applied first, before the scheduler
    records the groups' initial learning rates; a warm-up longer than the run is warned about."""
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
    total_steps = total_optimizer_steps(trainer)
    if warmup_steps > total_steps:
        rank_zero_warn(
            f"model.warmup_steps={warmup_steps} is longer than the whole run ({total_steps} "
            "optimizer steps): the learning rate never reaches its peak. Shorten the warm-up or train longer."
        )
    schedule = WarmupCosine(warmup_steps, total_steps, min_lr_ratio)
    return {"scheduler": LambdaLR(optimizer, schedule), "interval": "step", "frequency": 1, "name": "lr"}
