"""The training augmentation recipe, written once, and its executor: every path (CPU workers, batched on the
device, and the GPU-decode path) reads its settings from one ``TrainAugment``, as torchvision's classification
presets do, and runs it with one ``AugmentExecutor``.

A DataModule takes it as one ``augment:`` argument; jsonargparse merges it key by key, so a config file or
``--data.init_args.augment.randaugment_magnitude 15`` changes only that key. Adding an augmentation is one field
in ``TrainAugment`` plus its step in ``AugmentExecutor`` (and ``PerImageAugment``); the DataModules stay untouched.

The executor runs flip, RandAugment, colour jitter and random erasing (and the pad-crop) batched on the device
(``on_device``, and after GPU decoding), and per image in loader workers (``PerImageAugment``: the same steps and
draws, from that sample's own generator, with the policy run as OpenCV calls). Only the random-resized crop, which
decides how much of a file to decode, happens before it, where the image is decoded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from datamodules.augmentation.batched_ops import BatchRandAugment
from datamodules.augmentation.crops import DEFAULT_RATIO
from datamodules.augmentation.opencv_ops import OpenCVRandAugment
from datamodules.augmentation.policy import check_magnitude
from datamodules.augmentation.tensor_ops import PadMode, pad_crop_flip, random_erase, random_hflip
from datamodules.sampling.draws import current_draws

CropKind = Literal["resized", "pad"]

# fields that shape only one kind of crop; every other field acts on every crop kind
CROP_FIELDS: dict[CropKind, frozenset[str]] = {
    "resized": frozenset({"scale", "ratio"}),
    "pad": frozenset({"crop_padding", "pad_mode"}),
}
EXECUTOR_FIELDS = frozenset({"on_device"})  # where the recipe runs, not what it does


@dataclass(frozen=True)
class TrainAugment:
    """Train-time augmentation, applied in this order: crop (random-resized, or pad-crop), horizontal flip,
    RandAugment (``policy``), colour jitter, random erasing.

    Args:
        scale: area fraction range of the random-resized crop (folder/shard datasets, ``preset: imagenet``).
        ratio: aspect-ratio range of the random-resized crop.
        crop_padding: pad-crop shift in pixels (CIFAR, and ``preset: cifar``); 0 = no crop.
        pad_mode: what the pad-crop shows beyond the border.
        hflip: probability of a horizontal flip.
        randaugment_layers: RandAugment ops per image (0 = off).
        randaugment_magnitude: strength of every RandAugment op, 0..30 (10 = each op's reference strength).
        color_jitter: brightness/contrast/saturation factors drawn from [1 - j, 1 + j] per image (0 = off).
        random_erasing: per-image probability of overwriting a random rectangle with noise.
        on_device: run flip, RandAugment, jitter and erasing batched on the batch's device; loader workers then
            only decode and crop. false runs the same executor per image in the workers.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = DEFAULT_RATIO
    crop_padding: int = 4
    pad_mode: PadMode = "reflect"
    hflip: float = 0.5
    randaugment_layers: int = 2
    randaugment_magnitude: float = 9.0
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    on_device: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "ratio", tuple(float(r) for r in self.ratio))
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"augment.scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1] or not math.isfinite(self.ratio[1]):
            raise ValueError(f"augment.ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        if self.crop_padding < 0:
            raise ValueError(f"augment.crop_padding must be >= 0, got {self.crop_padding}")
        if self.pad_mode not in ("reflect", "zero"):
            raise ValueError(f"augment.pad_mode must be 'reflect' or 'zero', got {self.pad_mode!r}")
        for name in ("hflip", "random_erasing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.randaugment_layers < 0:
            raise ValueError(f"augment.randaugment_layers must be >= 0, got {self.randaugment_layers}")
        check_magnitude(self.randaugment_magnitude)
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ValueError(f"augment.color_jitter must be in [0, 1], got {self.color_jitter}")

    def replace(self, **changes: Any) -> TrainAugment:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (tuples of floats, numbers, strings): what checkpoints keep (``weights_only``-safe)."""
        return dataclasses.asdict(self)


def as_recipe(value: TrainAugment | Mapping[str, Any] | None, default: TrainAugment) -> TrainAugment:
    """A recipe from a ``TrainAugment``, or from a dict of fields to change in ``default`` (what a checkpoint's
    hyper-parameters and Python callers pass); unknown keys are refused by name."""
    if value is None:
        return default
    if isinstance(value, TrainAugment):
        return value
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(TrainAugment)})
    if unknown:
        keys = [f.name for f in dataclasses.fields(TrainAugment)]
        raise ValueError(f"augment has no key {unknown[0]!r}; its keys are {keys}")
    return default.replace(**value)


def fields_for(crop: CropKind) -> list[str]:
    """The recipe fields that change the output of the ``crop`` kind's executors."""
    other = set().union(*(f for kind, f in CROP_FIELDS.items() if kind != crop))
    return [f.name for f in dataclasses.fields(TrainAugment) if f.name not in other | EXECUTOR_FIELDS]


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
