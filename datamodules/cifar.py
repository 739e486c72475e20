"""CIFAR-10/100 held in memory as uint8: the official python-pickle release or an image-folder copy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from datamodules.augmentation.recipe import AugmentExecutor, PerImageAugment, TrainAugment, as_recipe
from datamodules.base import (
    DEFAULT_NUM_WORKERS,
    ImageClassificationDataModule,
    ImageSize,
)
from datamodules.decoding.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels
from datamodules.sampling.draws import PerSampleDraws
from datamodules.sources.cifar_release import (
    RELEASES,
    Variant,
    ensure_release,
    holdout_indices,
    load_batches,
    load_class_names,
)
from datamodules.sources.in_memory import TensorImageDataset

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NATIVE_SIZE = (32, 32)
CIFAR_AUGMENT = TrainAugment(randaugment_layers=0)  # pad-crop 4 (reflect) and flip


class TrainTensorImages(PerSampleDraws, TensorImageDataset):
    """Training images whose per-image augmentation draws depend only on (seed, epoch, index)."""


class CIFARDataModule(ImageClassificationDataModule):
    """CIFAR-10 or CIFAR-100 (fine labels) with the standard pad-crop/flip recipe.

    Args:
        variant: "cifar10" or "cifar100".
        source: "pickle" reads the official release; "folder" decodes an image-folder copy
            (``root/train/<class>/*.jpg`` and, optionally, ``root/test/`` or ``root/val/``) into
            memory once, so both feed the same pipeline. Class folders in sorted order are the labels.
        root: folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/`` (pickle), or the
            split folders (folder).
        download: fetch and verify the official archive when files are missing (pickle only).
        download_url, download_md5: override the archive source (default: the official release).
        max_image_pixels: ("folder") a file whose header declares more pixels stops the load naming it
            (a decompression bomb); default Pillow's 89,478,485.
        on_corrupt: ("folder") "skip" leaves unreadable files out of the split, each with a warning naming it
            (counted in ``num_corrupt_skipped``); "error" stops the load naming the file.
        val_split: "test" validates on the official test batch; "holdout" validates on
            the last ``holdout_per_class`` training images of each class (no tuning on test).
        augment: the training augmentation recipe (``TrainAugment``: pad-crop, flip, RandAugment, jitter,
            erasing, and ``on_device``: batched on the device in ``on_after_batch_transfer``, workers then only
            index memory; false runs the same executor per image in the workers). Its scale and ratio
            (random-resized crop) do not apply: CIFAR images are pad-cropped.
        image_size: model input size; other than 32 means upsampling on the device.
        batch_size: images per batch PER DEVICE.
        eval_batch_size: images per validation/test batch (default: batch_size).
        Others: see ``ImageClassificationDataModule``.
    """

    interpolation = "bilinear"  # how 32x32 images are scaled up to a larger image_size; predict and export reuse it

    def __init__(
        self,
        *,
        variant: Variant = "cifar10",
        source: Literal["pickle", "folder"] = "pickle",
        root: str = "data",
        download: bool = False,
        download_url: str | None = None,
        download_md5: str | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        on_corrupt: Literal["skip", "error"] = "skip",
        val_split: Literal["test", "holdout"] = "test",
        holdout_per_class: int = 500,
        augment: TrainAugment = CIFAR_AUGMENT,
        image_size: ImageSize = 32,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = DEFAULT_NUM_WORKERS,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        mean: tuple[float, float, float] = CIFAR_MEAN,
        std: tuple[float, float, float] = CIFAR_STD,
        seed: int = 0,
    ) -> None:
        if variant not in RELEASES:
            raise ValueError(f"variant must be one of {sorted(RELEASES)}, got {variant!r}")
        self.release = RELEASES[variant]
        super().__init__(
            num_classes=self.release.num_classes,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            image_size=image_size,
            mean=mean,
            std=std,
            seed=seed,
        )
        if source not in ("pickle", "folder"):
            raise ValueError(f"source must be 'pickle' or 'folder', got {source!r}")
        if val_split == "holdout" and holdout_per_class < 1:
            raise ValueError(f"val_split='holdout' needs holdout_per_class >= 1, got {holdout_per_class}")
        self.variant, self.source = variant, source
        self.root = Path(root)
        self.download = download
        self.download_url, self.download_md5 = download_url, download_md5
        self.max_image_pixels = check_max_pixels(max_image_pixels)
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        self.on_corrupt, self.num_corrupt_skipped = on_corrupt, 0
        self.val_split, self.holdout_per_class = val_split, holdout_per_class
        self.augment = as_recipe(augment, CIFAR_AUGMENT)
        self.device_augment = AugmentExecutor(self.augment, "pad")
        self.save_hyperparameters(logger=False)
        self.hparams["augment"] = self.augment.as_dict()  # plain values: checkpoints load with weights_only

    def prepare_data(self) -> None:
        """Runs on one process per node: download/extract if needed."""
        if self.source == "pickle":
            ensure_release(self.root, self.release, self.download, self.download_url, self.download_md5)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        (train_x, train_y), test = self._load_pickles() if self.source == "pickle" else self._load_folder()
        if self.val_split == "holdout":
            keep, held = holdout_indices(train_y, self.holdout_per_class, self.num_classes, self.class_names)
            self.val_set = TensorImageDataset(train_x[held], train_y[held])
            train_x, train_y = train_x[keep], train_y[keep]
            self.test_set = TensorImageDataset(*test) if test is not None else None
        else:
            self.val_set = self.test_set = TensorImageDataset(*test)
        per_image = None if self.augment.on_device else PerImageAugment(self.augment, "pad")
        self.train_set = TrainTensorImages(train_x, train_y, per_image)

    def _load_pickles(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        folder = ensure_release(self.root, self.release, self.download, self.download_url, self.download_md5)
        self.class_names = load_class_names(folder, self.release)
        train = load_batches(folder, self.release.train_files, self.release)
        return train, load_batches(folder, (self.release.test_file,), self.release)

    def _load_folder(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        # imported here: only this source decodes files, so a pickle run loads no image decoder
        from datamodules.sources.cifar_folder import load_cifar_folder

        needs_test = self.val_split == "test"
        folder = self.root, self.variant, self.num_classes, needs_test, NATIVE_SIZE, self.max_image_pixels
        self.class_names, train, test, self.num_corrupt_skipped = load_cifar_folder(*folder, self.on_corrupt)
        return train, test

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None and self.val_set is not None:
            rank_zero_warn(
                f"{self.root} has no test/ or val/ folder: test_dataloader serves the held-out validation images."
            )
            return self.val_dataloader()
        return super().test_dataloader()

    def device_transform(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """The augmentation recipe batched (when ``augment.on_device``) and upsampling to ``image_size``."""
        if train and self.augment.on_device:
            images = self.device_augment(images)
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images.float(), size=self.image_size, mode=self.interpolation, align_corners=False)
        return images
