"""The RandAugment policy and colour jitter on one HWC uint8 image with OpenCV: the executor loader workers run
(``augment.on_device: false``).

On one image on a CPU core, OpenCV's table lookups and warps cost 5-50x less than the batched tensor ops
(``batched_ops``), measured per op by ``python -m bench.loader_vs_timm --ops``. Each op is the OpenCV call
(or lookup table) whose arithmetic ``batched_ops`` reproduces, with the same setting from ``policy``, and
``OpenCVRandAugment`` takes its draws in ``BatchRandAugment``'s order from the same generator, so for one seed
the two executors produce the same image (geometric ops within one level on a few pixels).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

from datamodules.augmentation import policy
from datamodules.augmentation.batched_ops import GEOMETRIC_OPS, BatchRandAugment
from datamodules.augmentation.policy import GREY, OP_NAMES

# (HWC uint8 image, strength, sign +-1) -> HWC uint8 image
CpuOp = Callable[[np.ndarray, float, float], np.ndarray]
_LEVELS = np.arange(256, dtype=np.float32)


def _per_channel_lut(image: np.ndarray, luts: list[np.ndarray]) -> np.ndarray:
    """One lookup table per channel, in one OpenCV call."""
    table = np.stack(luts, axis=-1).astype(np.uint8).reshape(256, 1, image.shape[2])
    return cv2.LUT(image, table)


def auto_contrast(image: np.ndarray, strength: float, sign: float) -> np.ndarray:
    """``batched_ops.auto_contrast`` per channel: the histogram leaves out 255, as cv2.calcHist over [0, 255)."""
    luts = []
    for c in range(image.shape[2]):
        hist = cv2.calcHist([image], [c], None, [256], [0, 256]).ravel()
        hist[255] = 0
        present = np.flatnonzero(hist)
        if present.size == 0 or present[-1] <= present[0]:
            luts.append(_LEVELS)
            continue
        cdf = np.cumsum(hist, dtype=np.float32)
        low, high = cdf[present[0]], cdf[present[-1]]
        luts.append(np.clip(np.round((cdf - low) * np.float32(255) / max(high - low, np.float32(1))), 0, 255))
    return _per_channel_lut(image, luts)


def equalize(image: np.ndarray, strength: float, sign: float) -> np.ndarray:
    return cv2.merge([cv2.equalizeHist(channel) for channel in cv2.split(image)])


def solarize(image: np.ndarray, strength: float, sign: float) -> np.ndarray:
    cut = math.ceil(policy.setting("solarize", strength) * 255)
    return cv2.LUT(image, np.where(_LEVELS >= cut, 255 - _LEVELS, _LEVELS).astype(np.uint8))


def posterize(image: np.ndarray, strength: float, sign: float) -> np.ndarray:
    step = 2 ** (8 - int(policy.setting("posterize", strength)))
    return cv2.LUT(image, (np.floor(_LEVELS / step) * step).astype(np.uint8))


def sharpen(image: np.ndarray, strength: float, sign: float) -> np.ndarray:
    alpha = policy.setting("sharpen", strength)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1
    effect = np.full((3, 3), -1, np.float32)
    effect[1, 1] = 9
    kernel = (1 - alpha) * identity + alpha * effect
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def _geometric(name: str) -> CpuOp:
    matrix = GEOMETRIC_OPS[name]

    def apply(image: np.ndarray, strength: float, sign: float) -> np.ndarray:
        height, width = image.shape[:2]
        forward = matrix(torch.tensor([sign]), strength, height, width)[0, :2].numpy()
        border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": (GREY,) * 3}
        return cv2.warpAffine(image, forward, (width, height), flags=cv2.INTER_LINEAR, **border)

    return apply


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return cv2.LUT(image, np.floor(np.clip(_LEVELS * np.float32(factor), 0, 255)).astype(np.uint8))


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    bias = np.float32(_grey(image).mean(dtype=np.float64) * (1 - factor))
    return cv2.LUT(image, np.floor(np.clip(_LEVELS * np.float32(factor) + bias, 0, 255)).astype(np.uint8))


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    grey = cv2.cvtColor(_grey(image), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, float(np.float32(factor)), grey, float(np.float32(1 - factor)), 0)


def _enhance(name: str, adjust: Callable[[np.ndarray, float], np.ndarray]) -> CpuOp:
    return lambda image, strength, sign: adjust(image, policy.setting(name, strength, sign))


EXECUTORS: dict[str, CpuOp] = {
    "identity": lambda image, strength, sign: image,
    "auto_contrast": auto_contrast,
    "equalize": equalize,
    "solarize": solarize,
    "posterize": posterize,
    "sharpen": sharpen,
    **{name: _geometric(name) for name in GEOMETRIC_OPS},
    "brightness": _enhance("brightness", adjust_brightness),
    "contrast": _enhance("contrast", adjust_contrast),
    "saturation": _enhance("saturation", adjust_saturation),
}
OPS: tuple[CpuOp, ...] = tuple(EXECUTORS[name] for name in OP_NAMES)  # indexed by the drawn op index


class OpenCVRandAugment:
    """``BatchRandAugment``'s policy and jitter on one HWC uint8 image, with its draws from ``generator``."""

    def __init__(self, batched: BatchRandAugment) -> None:
        self.batched = batched

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        batched = self.batched
        if batched.layers == 0 and batched.color_jitter == 0:
            return image
        ops, signs = batched.sample(1, generator)
        for op, sign in zip(ops[:, 0].tolist(), signs[:, 0].tolist()):
            image = OPS[op](image, batched.strength, sign)
        if batched.color_jitter > 0:
            brightness, contrast, saturation = batched.jitter_factors(1, torch.device("cpu"), generator)[:, 0].tolist()
            image = adjust_saturation(adjust_contrast(adjust_brightness(image, brightness), contrast), saturation)
        return image
