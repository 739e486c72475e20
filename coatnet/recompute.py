"""Gradient checkpointing that moves BatchNorm running statistics once per step, as without it.

``torch.utils.checkpoint`` runs a block twice (forward, then again in backward); a BatchNorm in training
mode would update its running statistics on both runs. :class:`coatnet.model.Stage` checkpoints a
:class:`RecomputedBlock`, whose second run leaves them alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorms in ``module`` normalise with batch statistics as usual but leave their running ones alone."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.training and m.track_running_stats]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)


class RecomputedBlock:
    """A block for ``checkpoint``: its second run (the recomputation in backward) updates no BatchNorm
    running statistics, so they move once per step, as without checkpointing. Compiled graphs need
    no such care: their recomputation replays no buffer updates."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self.runs = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        if self.runs == 1:
            return self.block(x)
        with frozen_batchnorm_statistics(self.block):
            return self.block(x)
