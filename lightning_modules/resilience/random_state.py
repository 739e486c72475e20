"""Per-rank random streams, saved and restored with checkpoints, so a resumed run draws what it would have drawn."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RandomState(Callback):
    """The run's random state (config key ``random_state:``): gives every DDP rank its own random streams, and saves
    and restores them with checkpoints.

    ``seed_everything`` seeds every rank alike, so without a split each rank would draw the same
    drop-path masks, Mixup/CutMix pairs, device-side augmentations and loader-worker seeds for the
    same batch positions: fewer independent draws per global batch than the batch has images.
    In ``setup`` every rank but 0 reseeds torch (CPU and CUDA), numpy and Python from the shared
    state and its rank, after the model has been built alike on every rank; rank 0 keeps the
    shared streams, so a one-device run draws exactly what it did before.

    Lightning restores weights, optimizer, schedulers and loop counters but not the random streams,
    so without this a resumed run draws different Mixup/CutMix and drop-path samples than an
    uninterrupted one. States are stored as tensors and plain Python values so the checkpoint still
    loads with ``weights_only=True``. Rank 0's state is saved; on resume every rank restores it and
    splits it again by rank, so a resumed run on the same number of devices continues identically.
    """

    def __init__(self) -> None:
        self.rank = 0

    @property
    def state_key(self) -> str:
        """The key this state was saved under before the class was renamed, so older checkpoints resume exactly."""
        return "RandomStateCheckpoint"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.rank = trainer.global_rank
        split_streams(self.rank)

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        split_streams(self.rank)


def split_streams(rank: int) -> None:
    """Reseed torch, numpy and Python from the current (shared) torch stream and ``rank``; rank 0 keeps its streams."""
    if rank == 0:
        return
    shared = int(torch.randint(2**62, (1,)).item())
    torch_seed, numpy_seed, python_seed = np.random.SeedSequence([shared, rank]).generate_state(3, dtype=np.uint64)
    torch.manual_seed(int(torch_seed))
    np.random.seed(int(numpy_seed) % 2**32)
    random.seed(int(python_seed))
