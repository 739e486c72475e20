"""Per-sample CPU steps of loader workers: decoded HWC uint8 numpy image (or encoded bytes) -> uint8 tensor
(CHW, or HWC for train crops that ``collate_channels_last`` batches).

Nothing here normalises; that happens on the device (see ``base``). The recipe's augmentations run in
``recipe``'s executors; here are the steps that must happen where the image is decoded: the random-resized
crop (``TrainCropDecode``) and the evaluation crop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from datamodules.augmentation.crops import CropBox, eval_crop_box, sample_resized_crop
from datamodules.augmentation.recipe import TrainAugment
from datamodules.augmentation.tensor_ops import Interpolation
from datamodules.decoding.decoders import DEFAULT_MAX_IMAGE_PIXELS
from datamodules.decoding.scaled_jpeg import decode_resized_crop
from datamodules.sampling.draws import current_draws

CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> contiguous CHW uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def resize(image: np.ndarray, size: tuple[int, int], interpolation: Interpolation) -> np.ndarray:
    """Resize HWC to (height, width); area filter when shrinking to avoid aliasing."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height < image.shape[0] or width < image.shape[1]
    flag = cv2.INTER_AREA if shrinking else CV2_INTERPOLATION[interpolation]
    return cv2.resize(image, (width, height), interpolation=flag)


class TrainCropDecode:
    """Encoded bytes -> the recipe's random-resized crop at ``size``, decoded at reduced size where the crop
    allows (``scaled_jpeg``). Without ``then``, the crop is handed over as an HWC uint8 tensor and
    ``collate_channels_last`` makes the batch; with it, ``then`` takes the HWC array and returns the sample.
    The box comes from the sample's own draws (``sampling.draws``)."""

    def __init__(
        self,
        size: tuple[int, int],
        interpolation: Interpolation,
        recipe: TrainAugment,
        then: Any = None,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.size, self.interpolation, self.recipe, self.then = size, interpolation, recipe, then
        self.max_pixels = max_pixels

    def choose_box(self, height: int, width: int) -> CropBox:
        return sample_resized_crop(height, width, self.recipe.scale, self.recipe.ratio, current_draws().numpy)

    def __call__(self, data: np.ndarray) -> torch.Tensor:
        crop = decode_resized_crop(data, self.choose_box, self.size, self.interpolation, self.max_pixels)
        return torch.from_numpy(crop) if self.then is None else self.then(crop)

    def into(self, out: np.ndarray) -> Callable[[np.ndarray], None]:
        """Encoded bytes -> the crop written into ``out``, a [H, W, 3] uint8 slot of a batch (``then`` is not
        applied: for ``CropBatch`` making)."""
        return partial(decode_resized_crop, choose_box=self.choose_box, size=self.size,
                       interpolation=self.interpolation, max_pixels=self.max_pixels, out=out)  # fmt: skip


class CropBatch(NamedTuple):
    """Train crops made straight into one batch by a dataset's ``__getitems__`` (no per-sample tensors, no copy
    to stack them): [B, H, W, 3] uint8 images and [B] int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor


def empty_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a loader worker, in shared memory, as ``default_collate`` makes its
    batches, so that handing it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def collate_channels_last(
    samples: CropBatch | list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(HWC uint8 image, label) samples, or a ``CropBatch``, -> a [B, 3, H, W] uint8 batch stored channels-last,
    and the labels.

    Stacking HWC crops is a plain copy, about 5x cheaper per image than turning each into CHW first (a
    worker spent 5% of its time there), and channels-last is the order the model and the pinned copy keep.
    """
    images, labels = samples if isinstance(samples, CropBatch) else default_collate(samples)
    return images.permute(0, 3, 1, 2), labels


class EvalTransform:
    """Resize the short side to size/crop_pct and centre-crop ``size`` (done as crop, then one resize)."""

    def __init__(self, size: tuple[int, int], crop_pct: float, interpolation: Interpolation) -> None:
        self.size, self.crop_pct, self.interpolation = size, crop_pct, interpolation

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        box = eval_crop_box(image.shape[0], image.shape[1], self.size, self.crop_pct)
        crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
        return to_chw_tensor(resize(crop, self.size, self.interpolation))


class ResizeTo:
    """Adapter: HWC array at any size -> CHW tensor at ``size``, then an optional CHW transform."""

    def __init__(self, size: tuple[int, int], interpolation: Interpolation, then: Any = None) -> None:
        self.size, self.interpolation, self.then = size, interpolation, then

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        tensor = to_chw_tensor(resize(image, self.size, self.interpolation))
        return tensor if self.then is None else self.then(tensor)
