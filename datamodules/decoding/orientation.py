"""EXIF orientation: images are used upright, as a viewer shows them, on every path and with every decoder."""

from __future__ import annotations

import io

import torch
from PIL import Image

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the flips (tensor dims) that follow swapping height and width (5-8) or not (1-4)
_FLIPS: dict[int, tuple[int, ...]] = {1: (), 2: (-1,), 3: (-2, -1), 4: (-2,), 5: (), 6: (-1,), 7: (-2, -1), 8: (-2,)}


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 = upright; unknown values count as upright, as Pillow treats them)."""
    orientation = image.getexif().get(ORIENTATION_TAG, 1)
    return orientation if orientation in _FLIPS else 1


def encoded_orientation(data: torch.Tensor) -> int:
    """EXIF orientation of encoded bytes; reads only the header for JPEGs."""
    with Image.open(io.BytesIO(data.numpy())) as image:
        return exif_orientation(image)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a [..., H, W] image stored with ``orientation`` upright (what ``ImageOps.exif_transpose`` does).

    A turned image is contiguous; an upright one is returned as it is."""
    if orientation not in _FLIPS or orientation == 1:
        return image
    if orientation >= 5:
        image = image.transpose(-2, -1)
    flips = _FLIPS[orientation]
    return image.flip(flips) if flips else image.contiguous()
