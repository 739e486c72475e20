"""The DataLoader of one split, built the same way for every DataModule: the training loader resumes mid-epoch and
every loader seeds its workers from its own generator.

A loader's own generator seeds its workers: drawing from the global stream instead would shift the training draws
after it, differently in a resumed run (see ``ResumingDataLoader``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.sampling.resume import ResumingDataLoader, batches_done_this_epoch
from datamodules.sampling.workers import seed_worker

if TYPE_CHECKING:
    from datamodules.base import ImageClassificationDataModule


def split_loader(
    datamodule: ImageClassificationDataModule,
    dataset: Dataset,
    train: bool,
    sampler: Sampler[int] | None,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """The loader of ``dataset`` with ``datamodule``'s batch sizes and worker settings (``drop_last`` for
    training, so every step sees a full per-device batch)."""
    workers = datamodule.num_workers
    if train:
        loader_class = ResumingDataLoader
        own_seeding = {"batches_done": lambda: batches_done_this_epoch(datamodule.trainer)}
    else:
        loader_class, own_seeding = DataLoader, {"generator": torch.Generator().manual_seed(datamodule.seed)}
    return loader_class(
        dataset,
        batch_size=datamodule.batch_size if train else datamodule.eval_batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        pin_memory=datamodule.pin_memory and torch.cuda.is_available(),
        persistent_workers=datamodule.persistent_workers and workers > 0,
        worker_init_fn=seed_worker if workers > 0 else None,
        collate_fn=collate_fn,
        **own_seeding,
    )
