"""ImageNet-style ``root/<split>/<class>/<image>`` folders or tar shards, decoded on the CPU or on the device."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.augmentation.recipe import AugmentExecutor, PerImageAugment, TrainAugment, as_recipe
from datamodules.augmentation.tensor_ops import Interpolation, host_to_device
from datamodules.augmentation.transforms import (
    CropBatch,
    EvalTransform,
    ResizeTo,
    TrainCropDecode,
    collate_channels_last,
    empty_batch,
)
from datamodules.base import (
    DEFAULT_NUM_WORKERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageClassificationDataModule,
    ImageSize,
)
from datamodules.decoding.device_decode import (
    DeviceCropper,
    decode_batch,
    on_side_stream,
)
from datamodules.decoding.encoded_images import (
    CorruptFiles,
    EncodedCollate,
    EncodedImageDataset,
    EncodedImages,
    EncodedSource,
    OnCorrupt,
    bytes_tensor,
    decode_bytes,
)
from datamodules.decoding.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels
from datamodules.errors import DatasetError
from datamodules.sampling.draws import PerSampleDraws, sample_draws
from datamodules.sampling.shard_sampler import ShardOrderSampler
from datamodules.sources.folder_scan import (
    check_same_classes,
    hold_out,
    list_classes,
    scan_split,
)
from datamodules.sources.tar_shards import TarShards, is_shard_pattern, read_class_names

FOLDER_AUGMENT = TrainAugment(color_jitter=0.4)  # random-resized crop, flip, RandAugment 2 layers m9, jitter 0.4


class TrainEncodedImages(PerSampleDraws, EncodedImageDataset):
    """Training files whose crop and augmentation draws depend only on (seed, epoch, index)."""


class TrainCropBatches(TrainEncodedImages):
    """Training crops (``TrainCropDecode`` without ``then``: the recipe runs on the device) decoded straight into
    one batch: the DataLoader asks ``__getitems__`` for the batch's indices, and ``collate_channels_last`` hands the
    ``CropBatch`` on channels-last. ``dataset[i]`` gives the same crop as an HWC tensor."""

    decode: TrainCropDecode
    collate = staticmethod(collate_channels_last)

    def __getitems__(self, indices: list[int]) -> CropBatch:
        images = empty_batch((len(indices), *self.decode.size, 3))
        slots, found = images.numpy(), np.empty(len(indices), dtype=np.int64)
        for slot, index in enumerate(indices):
            with sample_draws(index):
                _, found[slot] = self.first_readable(index, self.decode.into(slots[slot]))
        return CropBatch(images, torch.from_numpy(self.source.labels[found].astype(np.int64, copy=False)))


class ImageFolderDataModule(ImageClassificationDataModule):
    """Class-per-folder image datasets (ImageNet layout, or JPEG copies of CIFAR), or the same images
    in tar shards (WebDataset layout, see ``datamodules.sources.tar_shards``).

    Args:
        root: dataset root holding ``train_dir`` (and ``val_dir`` / ``test_dir``).
        num_classes: expected number of classes; ``setup`` checks it (1000 for ImageNet).
        train_dir, val_dir, test_dir: split folders under ``root``, or glob patterns ending in
            ``.tar`` (e.g. ``imagenet1k-train-*.tar``) to read that split from tar shards; without
            ``test_dir`` the test loader serves the validation split.
        val_holdout_per_class: if > 0, validation is the last N files (sorted) of each
            training class instead of ``val_dir`` (class folders only).
        shard_index_dir: where shard indexes are cached (default: beside the shards, or
            ``~/.cache/coatnet/shard_index/`` when their folder is read-only). Indexes are built
            once, by ``prepare_data`` on the first run, in ``num_workers`` processes.
        shuffle_window: with shards, training samples are shuffled within runs of this many shards
            (and the shard order is shuffled every epoch).
        image_size: model input side or (height, width) (see ``ImageClassificationDataModule``).
        crop_pct: eval centre crop covers this fraction of the resized short side.
        interpolation: resampling filter for resizing up (shrinking uses an area/antialiased filter).
        augment: the training augmentation recipe (``TrainAugment``). With ``augment.on_device`` (the default)
            workers decode and crop only (at reduced size where the crop allows) and hand over uint8 crops;
            flip, RandAugment, jitter and erasing run batched on the device. false runs the same executor per
            image in the workers.
        on_corrupt: "skip" replaces unreadable files (warning + ``num_corrupt_skipped``); "error" stops.
        max_image_pixels: files whose header declares more pixels (width x height) are corrupt files
            (decompression bombs), refused before decoding on every path; default Pillow's 89,478,485.
        decode: "cpu" decodes and crops in workers; "gpu" has workers read bytes only and
            decodes JPEGs batched on the batch's device, where crop, resize and the recipe's
            executor (whatever ``augment.on_device`` says) run too.
        overlap_decode: with ``decode: gpu`` on CUDA, decode, crop and augment each batch on a second
            CUDA stream: the host queues the next batch while the GPU still runs the previous step
            (no step waits for the device), so that work can fill the GPU's idle gaps instead of
            running after the step. false runs it on the training stream.
        preset: "imagenet" (random-resized crop: ``augment.scale``/``ratio``; eval centre crop) or "cifar"
            (whole image resized, then ``augment.crop_padding``/``pad_mode`` pad-crop).
        batch_size: images per batch PER DEVICE.
        eval_batch_size: images per validation/test batch (default: batch_size).
        Others: see ``ImageClassificationDataModule``.
    """

    def __init__(
        self,
        *,
        root: str = "data/imagenet",
        num_classes: int = 1000,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        val_holdout_per_class: int = 0,
        image_size: ImageSize = 224,
        crop_pct: float = 0.875,
        interpolation: Interpolation = "bicubic",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        augment: TrainAugment = FOLDER_AUGMENT,
        shard_index_dir: str | None = None,
        shuffle_window: int = 4,
        on_corrupt: OnCorrupt = "skip",
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        decode: Literal["cpu", "gpu"] = "cpu",
        overlap_decode: bool = True,
        preset: Literal["imagenet", "cifar"] = "imagenet",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = DEFAULT_NUM_WORKERS,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
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
        if val_holdout_per_class < 0:
            raise ValueError(f"val_holdout_per_class must be >= 0, got {val_holdout_per_class}")
        if val_holdout_per_class > 0 and is_shard_pattern(train_dir):
            raise ValueError(
                "val_holdout_per_class needs class folders; with tar shards set val_dir to a shard pattern."
            )
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1 shard, got {shuffle_window}")
        self.root = Path(root)
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir
        self.val_holdout_per_class = val_holdout_per_class
        self.shard_index_dir = Path(shard_index_dir) if shard_index_dir is not None else None
        self.shuffle_window = shuffle_window
        self.crop_pct, self.interpolation = crop_pct, interpolation
        self.augment = as_recipe(augment, FOLDER_AUGMENT)
        self.decode, self.overlap_decode, self.preset = decode, overlap_decode, preset
        self.crop: Literal["resized", "pad"] = "pad" if preset == "cifar" else "resized"
        self.corrupt = CorruptFiles(on_corrupt)
        self.max_image_pixels = check_max_pixels(max_image_pixels)
        self.cropper = DeviceCropper(self.image_size, interpolation, crop_pct, self.augment, preset)
        self.device_augment = AugmentExecutor(self.augment, self.crop)
        self.save_hyperparameters(logger=False)
        self.hparams["augment"] = self.augment.as_dict()  # plain values: checkpoints load with weights_only

    @property
    def num_corrupt_skipped(self) -> int:
        """Unreadable files replaced so far, summed over all loader workers."""
        return self.corrupt.count

    # ---------------------------------------------------------------- transforms
    def _per_image_augment(self) -> PerImageAugment | None:
        return None if self.augment.on_device else PerImageAugment(self.augment, self.crop)

    def eval_transform(self) -> Any:
        if self.preset == "cifar":
            return ResizeTo(self.image_size, self.interpolation)
        return EvalTransform(self.image_size, self.crop_pct, self.interpolation)

    # --------------------------------------------------------------------- setup
    def _split_specs(self) -> list[str]:
        specs = [self.train_dir] if self.val_holdout_per_class > 0 else [self.train_dir, self.val_dir]
        return specs + ([self.test_dir] if self.test_dir is not None else [])

    def prepare_data(self) -> None:
        """Index tar shards once, in parallel (Lightning runs this on one process per node, before ``setup``)."""
        for spec in self._split_specs():
            if is_shard_pattern(spec):
                TarShards.open(self.root, spec, self.shard_index_dir, workers=max(1, self.num_workers), progress=True)

    def _open_shards(self, spec: str) -> TarShards:
        shards = TarShards.open(self.root, spec, self.shard_index_dir)
        shards.check_labels(self.num_classes)
        return shards

    def _scan_shards(self) -> tuple[EncodedSource, EncodedSource, EncodedSource | None]:
        for name, spec in (("val_dir", self.val_dir), ("test_dir", self.test_dir)):
            if spec is not None and not is_shard_pattern(spec):
                raise DatasetError(f"train_dir is a shard pattern, so {name} must be one too (got {spec!r}).")
        train = self._open_shards(self.train_dir)
        names = read_class_names(Path(train.shards[0]).parent, self.num_classes)
        self.class_names = names if names is not None else [str(i) for i in range(self.num_classes)]
        test = self._open_shards(self.test_dir) if self.test_dir is not None else None
        return train, self._open_shards(self.val_dir), test

    def _scan(self) -> tuple[EncodedSource, EncodedSource, EncodedSource | None]:
        if is_shard_pattern(self.train_dir):
            return self._scan_shards()
        train_path = self.root / self.train_dir
        classes = list_classes(train_path)
        if len(classes) != self.num_classes:
            raise DatasetError(
                f"num_classes={self.num_classes} but {train_path} has {len(classes)} class folders; "
                f"set num_classes: {len(classes)} or fix the folder."
            )
        self.class_names = classes
        train = scan_split(train_path, classes)
        if self.val_holdout_per_class > 0:
            train, val = hold_out(train, self.val_holdout_per_class, classes)
        else:
            val_path = self.root / self.val_dir
            if not val_path.is_dir():
                raise DatasetError(
                    f"validation folder {val_path} not found; add {val_path}/<class>/<image> "
                    "or set val_holdout_per_class > 0 to hold out training images."
                )
            check_same_classes(classes, list_classes(val_path), train_path, val_path)
            val = scan_split(val_path, classes)
        test = None
        if self.test_dir is not None:
            test_path = self.root / self.test_dir
            check_same_classes(classes, list_classes(test_path), train_path, test_path)
            test = scan_split(test_path, classes)
        return train, val, test

    def _dataset(self, source: EncodedSource, train: bool) -> EncodedImageDataset:
        if self.decode == "gpu":
            return EncodedImageDataset(source, bytes_tensor, None, self.corrupt, with_path=True)
        decode = partial(decode_bytes, max_pixels=self.max_image_pixels)
        if not train:
            return EncodedImageDataset(source, decode, self.eval_transform(), self.corrupt)
        if self.preset == "cifar":
            resized = ResizeTo(self.image_size, self.interpolation, self._per_image_augment())
            return TrainEncodedImages(source, decode, resized, self.corrupt)
        crop = TrainCropDecode(
            self.image_size, self.interpolation, self.augment, then=self._per_image_augment(),
            max_pixels=self.max_image_pixels,
        )  # fmt: skip
        dataset_type = TrainCropBatches if crop.then is None else TrainEncodedImages
        return dataset_type(source, crop, None, self.corrupt)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, test = self._scan()
        self.train_set = self._dataset(train, train=True)
        self.val_set = self._dataset(val, train=False)
        self.test_set = self._dataset(test, train=False) if test is not None else None

    # ------------------------------------------------------------------- loaders
    def _collate(self, dataset: Dataset, train: bool) -> Callable | None:
        if self.decode == "gpu":
            return EncodedCollate(train)
        return getattr(dataset, "collate", None)  # the datasets that make their own batches say how

    def _sampler(self, dataset: Dataset, train: bool) -> Sampler[int] | None:
        """Shards are read whole, one contiguous run of them per rank; folders use the base order."""
        source = getattr(dataset, "source", None)
        if not isinstance(source, TarShards):
            return super()._sampler(dataset, train)
        world, rank = self._world()
        return ShardOrderSampler(
            source.shard_sizes,
            world,
            rank,
            shuffle=train,
            seed=self.seed,
            drop_last=train,
            window_shards=self.shuffle_window,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", train=True, collate_fn=self._collate(self.train_set, True))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", train=False, collate_fn=self._collate(self.val_set, False))

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None and self.val_set is not None:
            rank_zero_warn("test_dir is not set: test_dataloader serves the validation split.")
            return self.val_dataloader()
        return self._loader(self.test_set, "test", train=False, collate_fn=self._collate(self.test_set, False))

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # -------------------------------------------------------------- device side
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Encoded files stay on the CPU (decoders read host memory); only labels move."""
        images, labels = batch
        if isinstance(images, EncodedImages):
            return images, host_to_device(labels, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        if not isinstance(images, EncodedImages):
            return super().on_after_batch_transfer(batch, dataloader_idx)
        images, labels = self.decode_on_device(images, labels)
        return self.normalize(images), labels

    def device_transform(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """Flip, RandAugment, jitter and erasing batched on the device (``augment.on_device``) for CPU-decoded crops."""
        return self.device_augment(images) if train and self.augment.on_device else images

    def decode_on_device(self, batch: EncodedImages, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode + crop on ``labels.device``: float [B,3,H,W] in 0..255 and the matching labels."""
        device = labels.device
        with on_side_stream(device, self.overlap_decode) as hand_over:
            decoded, sources = decode_batch(batch, device, self.corrupt, self.max_image_pixels)
            images = hand_over(self.cropper(decoded, batch.train))
        if sources != list(range(len(sources))):
            labels = labels[host_to_device(torch.tensor(sources), device)]
        return images, labels
