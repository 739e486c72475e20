"""Random-resized crops decoded at reduced size: the crop box is drawn from the header's size, then a JPEG is
decoded at the smallest DCT scale (1/2, 1/4, 1/8) at which the box still covers the output size (Pillow's
``draft``), and the box is cut and resized in one resampling pass.

A 2000x1500 photo cropped to 224x224 then decodes at 1/4 or 1/8 of its area or less. The image is the one
``decoders`` gives (upright per EXIF, RGB); other formats, and deep or unusual JPEGs, are decoded whole by
``decoders.decode_rgb``, so 16-bit handling and the decode errors stay those of every other path.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from datamodules.augmentation.crops import CropBox
from datamodules.decoding.decoders import decode_rgb
from datamodules.decoding.orientation import exif_orientation

DRAFT_MODES = frozenset({"RGB", "L"})  # JPEG modes libjpeg converts to RGB while decoding at a DCT scale
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# EXIF orientation -> the Pillow transpose that turns the stored image upright (as ImageOps.exif_transpose)
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ChooseBox = Callable[[int, int], CropBox]  # (upright height, width) -> the crop box in upright pixels


def _resized(image: Image.Image, box: CropBox, scale: tuple[float, float], size: tuple[int, int], resample: int) -> torch.Tensor:
    """Cut ``box`` (in full-size pixels; ``image`` is that size times ``scale`` = (y, x)) and resize it to ``size``."""
    sy, sx = scale
    region = (box.left * sx, box.top * sy, (box.left + box.width) * sx, (box.top + box.height) * sy)
    out = np.asarray(image.resize((size[1], size[0]), resample, box=region))
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def decode_resized_crop(
    data: np.ndarray, choose_box: ChooseBox, size: tuple[int, int], interpolation: str
) -> torch.Tensor:
    """Encoded bytes -> the chosen crop, upright, as CHW uint8 RGB at ``size``; raises on corrupt data."""
    resample = RESAMPLE[interpolation]
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # not for Pillow (or not an image): decode_rgb reads it or says why not
        image = None
    if image is None or image.format != "JPEG" or image.mode not in DRAFT_MODES:
        if image is not None:
            image.close()
        full = decode_rgb(data)
        box = choose_box(*full.shape[-2:])
        return _resized(Image.fromarray(full.permute(1, 2, 0).numpy()), box, (1.0, 1.0), size, resample)
    with image:
        orientation = exif_orientation(image)
        width, height = image.size
        upright_hw = (width, height) if orientation >= 5 else (height, width)
        box = choose_box(*upright_hw)
        # the box at the decoded scale must keep at least the output's pixels: draft never goes below this request
        need = max(size[0] / box.height, size[1] / box.width)
        if need < 1.0:
            image.draft("RGB", (int(np.ceil(width * need)), int(np.ceil(height * need))))
        image.load()
        decoded = image if image.mode == "RGB" else image.convert("RGB")
        if orientation in TRANSPOSE:
            decoded = decoded.transpose(TRANSPOSE[orientation])
        return _resized(decoded, box, (decoded.height / upright_hw[0], decoded.width / upright_hw[1]), size, resample)
