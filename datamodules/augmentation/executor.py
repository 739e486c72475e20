"""The recipe's executor: flip, RandAugment, colour jitter and random erasing (and the pad-crop) on a batch.

One executor serves every path: batched on the device (``on_device``, and after GPU decoding), and per image
in loader workers (``PerImageAugment``: the same steps and draws, from that sample's own generator, with the
policy run as OpenCV calls). Only the random-resized crop, which decides how much of a file to decode,
happens before it, where the image is decoded.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.augmentation.batched_ops import BatchRandAugment
from datamodules.augmentation.opencv_ops import OpenCVRandAugment
from datamodules.augmentation.recipe import CropKind, TrainAugment
from datamodules.augmentation.tensor_ops import pad_crop_flip, random_erase, random_hflip
from datamodules.sampling.draws import current_draws


class AugmentExecutor:
    """``recipe`` after the crop, on uint8 (or float 0..255) [B,3,H,W] images on any device; same dtype out.

    With ``crop="pad"`` the pad-crop runs here too (it keeps the image size). Draws come from ``generator``,
    or from the global streams (those checkpoints save) when it is None.
    """

    def __init__(self, recipe: TrainAugment, crop: CropKind) -> None:
        self.recipe, self.crop = recipe, crop
        self.policy = BatchRandAugment(recipe.randaugment_layers, recipe.randaugment_magnitude, recipe.color_jitter)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        recipe = self.recipe
        if self.crop == "pad":
            images = pad_crop_flip(images, recipe.crop_padding, recipe.pad_mode, recipe.hflip, generator)
        else:
            images = random_hflip(images, recipe.hflip, generator)
        images = self.policy(images, generator)
        return random_erase(images, recipe.random_erasing, generator=generator)


class PerImageAugment:
    """The executor in a loader worker: one CHW image, with its sample's draws (``sampling.draws``).

    The same steps in the same order with the same draws as ``AugmentExecutor``; the RandAugment policy and
    jitter run as OpenCV calls (``opencv_ops``), which on one image on a CPU core cost far less than tensor ops.
    """

    def __init__(self, recipe: TrainAugment, crop: CropKind) -> None:
        self.executor = AugmentExecutor(recipe, crop)
        self.policy = OpenCVRandAugment(self.executor.policy)

    def __call__(self, image: torch.Tensor | np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """A CHW uint8 tensor or an HWC uint8 array (as the crop decoder makes it) -> CHW uint8 tensor."""
        recipe, generator = self.executor.recipe, generator or current_draws().torch
        if self.executor.crop == "pad":
            chw = image if isinstance(image, torch.Tensor) else torch.from_numpy(image).permute(2, 0, 1)
            cropped = pad_crop_flip(chw[None], recipe.crop_padding, recipe.pad_mode, recipe.hflip, generator)
            hwc = cropped[0].permute(1, 2, 0)
        else:  # the draw random_hflip takes, with the flip as a view
            hwc = image.permute(1, 2, 0) if isinstance(image, torch.Tensor) else torch.from_numpy(image)
            if recipe.hflip > 0 and bool(torch.rand(1, generator=generator)[0] < recipe.hflip):
                hwc = hwc.flip(1)
        augmented = torch.from_numpy(self.policy(np.ascontiguousarray(hwc.numpy()), generator)).permute(2, 0, 1)
        return random_erase(augmented[None], recipe.random_erasing, generator=generator)[0]
