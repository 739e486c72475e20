"""Per-sample CPU transforms: decoded HWC uint8 numpy image -> CHW uint8 tensor.

Nothing here normalises; that happens on the device (see ``base``).
"""

from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import cv2
import numpy as np
import torch

from datamodules.augmentation.albumentations_ops import rand_augment
from datamodules.augmentation.crops import (
    DEFAULT_RATIO,
    eval_crop_box,
    sample_resized_crop,
)
from datamodules.augmentation.tensor_ops import (
    Interpolation,
    PadMode,
    pad_crop_flip,
    random_erase,
)

CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> contiguous CHW uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def to_hwc_array(image: torch.Tensor) -> np.ndarray:
    """CHW uint8 tensor -> contiguous HWC uint8 array (for albumentations)."""
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def resize(image: np.ndarray, size: tuple[int, int], interpolation: Interpolation) -> np.ndarray:
    """Resize HWC to (height, width); area filter when shrinking to avoid aliasing."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height < image.shape[0] or width < image.shape[1]
    flag = cv2.INTER_AREA if shrinking else CV2_INTERPOLATION[interpolation]
    return cv2.resize(image, (width, height), interpolation=flag)


class SharedRandomResizedCrop(A.RandomResizedCrop):
    """albumentations RandomResizedCrop whose box comes from ``crops.sample_resized_crop``.

    Keeps the CPU path statistically identical to the device path.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        box = sample_resized_crop(height, width, self.scale, self.ratio, self.random_generator)
        return {"crop_coords": (box.left, box.top, box.left + box.width, box.top + box.height)}


class _Reseedable:
    """Owns an albumentations pipeline that loader workers reseed (see ``base.seed_worker``)."""

    pipeline: Optional[A.Compose]

    def reseed(self, seed: int) -> None:
        if self.pipeline is not None:
            self.pipeline.set_random_seed(seed)


class ImageNetTrainTransform(_Reseedable):
    """Random-resized crop, h-flip, optional RandAugment-style policy and colour jitter."""

    def __init__(
        self,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = DEFAULT_RATIO,
        interpolation: Interpolation = "bicubic",
        hflip: float = 0.5,
        randaugment_layers: int = 2,
        randaugment_magnitude: float = 9.0,
        color_jitter: float = 0.4,
        seed: Optional[int] = None,
    ) -> None:
        ops: list[Any] = [
            SharedRandomResizedCrop(
                size=size,
                scale=scale,
                ratio=ratio,
                interpolation=CV2_INTERPOLATION[interpolation],
                area_for_downscale="image",
            )
        ]
        if hflip > 0:
            ops.append(A.HorizontalFlip(p=hflip))
        if randaugment_layers > 0:
            ops.append(rand_augment(randaugment_layers, randaugment_magnitude))
        if color_jitter > 0:
            j = color_jitter
            ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=(0.0, 0.0), p=1.0))
        self.pipeline = A.Compose(ops, seed=seed)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_chw_tensor(self.pipeline(image=image)["image"])


class EvalTransform:
    """Resize the short side to size/crop_pct and centre-crop ``size`` (done as crop, then one resize)."""

    def __init__(self, size: tuple[int, int], crop_pct: float, interpolation: Interpolation) -> None:
        self.size, self.crop_pct, self.interpolation = size, crop_pct, interpolation

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        box = eval_crop_box(image.shape[0], image.shape[1], self.size, self.crop_pct)
        crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
        return to_chw_tensor(resize(crop, self.size, self.interpolation))


class CifarTrainTransform(_Reseedable):
    """CIFAR recipe on a CHW uint8 tensor: [RandAugment] -> pad-crop + flip -> [random erasing].

    ``crop_flip=False`` leaves crop and flip to the device (``augment_on_device``).
    """

    def __init__(
        self,
        padding: int = 4,
        pad_mode: PadMode = "reflect",
        hflip: float = 0.5,
        randaugment_layers: int = 0,
        randaugment_magnitude: float = 9.0,
        random_erasing: float = 0.0,
        crop_flip: bool = True,
        seed: Optional[int] = None,
    ) -> None:
        self.padding, self.pad_mode, self.hflip = padding, pad_mode, hflip
        self.random_erasing, self.crop_flip = random_erasing, crop_flip
        self.pipeline = (
            A.Compose([rand_augment(randaugment_layers, randaugment_magnitude)], seed=seed)
            if randaugment_layers > 0
            else None
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.pipeline is not None:
            image = to_chw_tensor(self.pipeline(image=to_hwc_array(image))["image"])
        if not self.crop_flip:
            return image
        batch = pad_crop_flip(image[None], self.padding, self.pad_mode, self.hflip)
        return random_erase(batch, self.random_erasing)[0]


class ResizeTo:
    """Adapter: HWC array at any size -> CHW tensor at ``size``, then an optional CHW transform."""

    def __init__(self, size: tuple[int, int], interpolation: Interpolation, then: Any = None) -> None:
        self.size, self.interpolation, self.then = size, interpolation, then

    def reseed(self, seed: int) -> None:
        if self.then is not None:
            self.then.reseed(seed)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        tensor = to_chw_tensor(resize(image, self.size, self.interpolation))
        return tensor if self.then is None else self.then(tensor)

