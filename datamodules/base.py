"""Shared behaviour of every image-classification DataModule in this project.

Loaders move uint8 images (4x cheaper than float32 through worker IPC and the
host-to-device copy); conversion to normalised float32 happens on the device
in ``on_after_batch_transfer``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.checks import ImageSize, check_image_size, check_normalisation
from datamodules.errors import DatasetError
from datamodules.sampling.epoch_sampler import EpochShuffleSampler
from datamodules.sampling.loaders import split_loader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NUM_WORKERS = min(8, max(0, (os.cpu_count() or 1) - 1))


class ImageClassificationDataModule(L.LightningDataModule):
    """Base class: the data contract (loaders yield uint8 [B,3,H,W] images, checked and normalised on the device),
    the settings every DataModule shares, and the split loaders.

    Subclasses set ``num_classes`` in ``__init__``, build ``self.train_set``,
    ``self.val_set`` and ``self.test_set`` in ``setup`` and may override
    ``device_transform`` for batched augmentation on the accelerator.

    Args:
        num_classes: number of target classes (known before any data is read).
        batch_size: images per batch PER DEVICE; the global batch is
            batch_size x devices x nodes (x gradient accumulation).
        eval_batch_size: images per validation/test/predict batch (default: ``batch_size``). With a
            compiled model, a size that divides the split avoids compiling a second graph for a
            smaller last batch.
        num_workers: loader worker processes per device (0 = load in the main process).
        pin_memory: page-lock host batches for faster, asynchronous copies to the GPU.
        persistent_workers: keep workers alive between epochs (only used when num_workers > 0).
        image_size: side or (height, width) of the images the model sees (the model's rule: a multiple of 32, or
            of 16 with a stride-1 stem).
        mean: per-channel mean (0..1 scale) used for normalisation on the device.
        std: per-channel standard deviation (0..1 scale).
        seed: seed for data generation, shuffling and augmentation.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = DEFAULT_NUM_WORKERS,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        image_size: ImageSize = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 (or null for batch_size), got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        check_normalisation(mean, std)
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.image_size: tuple[int, int] = check_image_size(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = int(seed)
        self.class_names: list[str] = [str(i) for i in range(self.num_classes)]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._affine_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------- the data contract: uint8 batches, normalised on the device
    def _is_training(self) -> bool:
        trainer = self.trainer
        return trainer is not None and bool(trainer.training)

    def device_transform(self, images: Any, train: bool) -> torch.Tensor:
        """Hook for batched work on the device before normalisation (identity here)."""
        return images

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        self.check_batch(images)
        images = self.device_transform(images, self._is_training())
        return self.normalize(images), labels

    def check_batch(self, images: Any) -> None:
        """The data contract: loaders yield uint8 [B,3,H,W] images (dtype and shape are metadata: no host sync).

        Float images would be divided by 255 again in ``normalize`` and train on near-black inputs."""
        is_tensor = isinstance(images, torch.Tensor)
        if is_tensor and images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3:
            return
        found = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DatasetError(
            f"{type(self).__name__}'s loader yields {found} images; loaders must yield uint8 [B,3,H,W] in 0..255 "
            "(normalisation happens on the device): return uint8 from the dataset (e.g. PILToTensor, not ToTensor)."
        )

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), self.mean, self.std)
        if key not in self._affine_cache:
            std = torch.tensor(self.std, dtype=torch.float32)
            mean = torch.tensor(self.mean, dtype=torch.float32)
            scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
            shift = (-mean / std).view(1, 3, 1, 1).to(device)
            self._affine_cache = {key: (scale, shift)}
        return self._affine_cache[key]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0..255) [B,3,H,W] -> float32 ``(x/255 - mean)/std`` in one fused op."""
        scale, shift = self._affine(images.device)
        return torch.addcmul(shift, images.float(), scale)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize`` to float in [0, 1], e.g. for TensorBoard images."""
        scale, shift = self._affine(images.device)
        return ((images.float() - shift) / scale / 255.0).clamp_(0.0, 1.0)

    # ------------------------------------------------- loaders (built by sampling.loaders.split_loader)
    def _loader(
        self, dataset: Dataset | None, split: str, train: bool, collate_fn: Callable | None = None
    ) -> DataLoader:
        if dataset is None:
            raise DatasetError(f"the {split} split is not set up: call setup() (or let the Trainer do it) first.")
        return split_loader(self, dataset, train, self._sampler(dataset, train), collate_fn)

    def _sampler(self, dataset: Dataset, train: bool) -> Sampler[int] | None:
        """Training order, one share per rank (None: in order; Lightning splits that across ranks)."""
        return EpochShuffleSampler(dataset, self.seed, *self._world()) if train else None

    def _world(self) -> tuple[int, int]:
        """(number of ranks, this rank) of the attached Trainer; (1, 0) without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, drop_last=True so every step sees a full per-device batch."""
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", train=False)

    def predict_dataloader(self) -> DataLoader:
        """Serves the validation split with eval transforms."""
        return self._loader(self.val_set, "val", train=False)
