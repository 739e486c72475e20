"""What the training step and the callbacks that watch it agree on: the batch layout and when loggers write."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from torch import Tensor


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """``(images, labels)`` from a batch that is a tensor or an ``(images, labels, ...)`` sequence."""
    if isinstance(batch, Tensor):
        return batch, None
    images, labels = batch[0], batch[1] if len(batch) > 1 else None
    return images, labels


def loggers_write_after(trainer: Trainer, optimizer_steps: int) -> bool:
    """Lightning's rule: step metrics are written after optimizer step ``optimizer_steps`` (counted
    from 1) when it is a multiple of ``trainer.log_every_n_steps``."""
    every = trainer.log_every_n_steps
    return every > 0 and optimizer_steps % every == 0
