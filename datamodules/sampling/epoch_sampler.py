"""The training order of in-memory and folder datasets: a shuffle that depends only on (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler

from datamodules.sampling.resume import SkipsTrainedSamples


class EpochShuffleSampler(SkipsTrainedSamples, DistributedSampler):
    """A shuffle order that depends only on (seed, epoch), split across ranks like ``DistributedSampler``.

    Lightning calls ``set_epoch`` before every epoch and leaves a ``DistributedSampler`` in place
    under DDP, so a run resumed at epoch k sees the same order as one that never stopped. With one
    rank the order is the whole permutation; with several, rank r takes every r-th index of it.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        return iter(self._untrained(order[self.rank : self.total_size : self.num_replicas]))
