"""Crop geometry shared by the CPU (albumentations) and device (tensor) pipelines.

Sampling lives here once, so both decode paths draw crops with identical
statistics; only the pixel resampling differs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

Range = tuple[float, float]
DEFAULT_RATIO: Range = (3.0 / 4.0, 4.0 / 3.0)


class CropBox(NamedTuple):
    """Pixel rectangle inside an image: top-left corner plus size."""

    top: int
    left: int
    height: int
    width: int


def sample_resized_crop(
    height: int, width: int, scale: Range, ratio: Range, rng: np.random.Generator, attempts: int = 10
) -> CropBox:
    """Draw an Inception-style crop: area fraction ~ U(scale), log aspect ~ U(log ratio).

    Position is uniform over all placements that fit. After ``attempts``
    rejected draws it falls back to the largest centred box whose aspect ratio
    is clamped into ``ratio``, so it always returns a valid box.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, max(1, int(round(width / ratio[0])))
    elif aspect > ratio[1]:
        h, w = height, max(1, int(round(height * ratio[1])))
    else:
        h, w = height, width
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def eval_crop_box(height: int, width: int, size: tuple[int, int], crop_pct: float) -> CropBox:
    """Centre box equal to "resize short side to size/crop_pct, then centre-crop size".

    Expressed as a box in source pixels so both pipelines can crop first and
    resize once (cheaper, and one resampling step instead of two).
    """
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    out_h, out_w = size
    # scale factor of the intermediate resize: the smaller image side maps to side/crop_pct
    resize = max(out_h / crop_pct / height, out_w / crop_pct / width)
    h = min(height, max(1, int(round(out_h / resize))))
    w = min(width, max(1, int(round(out_w / resize))))
    return CropBox((height - h) // 2, (width - w) // 2, h, w)
