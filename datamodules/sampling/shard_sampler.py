"""Sample order for tar shards: whole shards per rank, shuffled by (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import DistributedSampler

from datamodules.sampling.resume import SkipsTrainedSamples


class ShardOrderSampler(SkipsTrainedSamples, DistributedSampler):
    """Each epoch shuffles the shard order, gives every rank one contiguous run of that order (so a rank
    reads few shards, each from start to end) and shuffles the rank's samples within windows of
    ``window_shards`` shards.

    Every rank gets the same number of samples, as with ``DistributedSampler``: with ``drop_last`` the
    remainder is dropped, without it the first samples repeat. Being a ``DistributedSampler``,
    Lightning neither replaces it under DDP nor forgets ``set_epoch``. Shards must hold their samples
    in random order (the writer shuffles; timm's WebDataset copies are shuffled), since the shuffle
    only mixes samples of nearby shards.
    """

    def __init__(
        self,
        shard_sizes: Sequence[int],
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        window_shards: int = 4,
    ) -> None:
        if window_shards < 1:
            raise ValueError(f"shuffle_window must be >= 1 shard, got {window_shards}")
        self.shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(self.shard_sizes)[:-1]])
        total = int(self.shard_sizes.sum())
        super().__init__(
            range(total), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.window = window_shards * math.ceil(total / len(self.shard_sizes))

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.shard_sizes)) if self.shuffle else np.arange(len(self.shard_sizes))
        indices = np.concatenate(
            [np.arange(self.shard_starts[s], self.shard_starts[s] + self.shard_sizes[s]) for s in order]
        )
        if len(indices) < self.total_size:
            indices = np.resize(indices, self.total_size)  # repeats from the start, like DistributedSampler
        mine = indices[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]
        if self.shuffle:
            for start in range(0, len(mine), self.window):
                rng.shuffle(mine[start : start + self.window])
        return iter(self._untrained(mine.tolist()))
