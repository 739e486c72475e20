"""Decoding with Pillow (and OpenCV for the deep images Pillow cannot read whole): the decoder for formats
torchcodec lacks (BMP, TIFF), and for every format where torchcodec cannot be loaded.

Every image comes out as CHW uint8 RGB, upright, scaled as torchcodec scales: 16-bit samples to
round(v / 257), floats in [0, 1] to round(v * 255); other float or 32-bit ranges are refused.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from datamodules.decoding.orientation import exif_orientation, orient

GREY_DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})  # Pillow keeps their samples whole
SIXTEEN_BIT_MAX = 65535


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit samples as they are; 16-bit and [0, 1] float samples scaled to 0..255; anything else refused."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind in "ui":
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > SIXTEEN_BIT_MAX:
            raise ValueError(
                f"{pixels.dtype} samples range {low}..{high}, beyond 16 bits: no known scale to 8 bits; "
                "convert the image to 8- or 16-bit"
            )
        return np.round(pixels.astype(np.float32) / 257).astype(np.uint8)
    if pixels.dtype.kind == "f":
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if not (np.isfinite(pixels).all() and 0.0 <= low and high <= 1.0):
            raise ValueError(
                f"float samples range {low:g}..{high:g}; only floats in [0, 1] can be scaled to 8 bits. "
                "Convert the image to 8-bit"
            )
        return np.round(pixels.astype(np.float32) * 255).astype(np.uint8)
    raise ValueError(f"{pixels.dtype} samples cannot be read as an image; convert it to 8-bit")


def rgb_from_channels(pixels: np.ndarray, bgr: bool) -> np.ndarray:
    """HW or HWC with 1-4 channels (grey, grey+alpha, colour, colour+alpha) -> HWC RGB; alpha is dropped."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] <= 2:
        return np.repeat(pixels[..., :1], 3, axis=2)
    colour = pixels[..., :3]
    return colour[..., ::-1] if bgr else colour


@contextmanager
def own_pixel_limit() -> Iterator[None]:
    """Pillow refuses images over twice its global ``MAX_IMAGE_PIXELS``; the project checks its own limit
    (``max_image_pixels``, see ``decoders``) before Pillow decodes, so Pillow's is lifted meanwhile (and
    restored after: other code in the process keeps Pillow's)."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _opencv_pixels(data: np.ndarray) -> np.ndarray:
    """OpenCV keeps 16-bit colour and float colour (which Pillow truncates or cannot open); EXIF is read elsewhere."""
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise OSError("unknown image format or corrupt header")
    return rgb_from_channels(to_uint8(pixels), bgr=True)


def _rawmode(image: Image.Image) -> str:
    args = image.tile[0].args if image.tile else ""
    return args if isinstance(args, str) else str(args[0])


def _pixels(image: Image.Image, data: np.ndarray, rawmode: str) -> np.ndarray:
    if image.mode in GREY_DEEP_MODES:
        return rgb_from_channels(to_uint8(np.asarray(image)), bgr=False)
    if ";16" in rawmode:  # 16-bit colour: Pillow would keep only the high byte of each sample
        return _opencv_pixels(data)
    return np.asarray(image.convert("RGB"))


def decode_with_pillow(data: np.ndarray) -> torch.Tensor:
    """Encoded bytes (1-D uint8) -> CHW uint8 RGB, upright (first frame of an animation); raises on corrupt data."""
    try:
        with own_pixel_limit():
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # e.g. a float colour TIFF, which OpenCV reads (its message names no file)
        pixels, orientation = _opencv_pixels(data), 1
    else:
        with image, own_pixel_limit():
            rawmode = _rawmode(image)  # before anything loads the pixels, which clears the tile list
            orientation = exif_orientation(image)
            pixels = _pixels(image, data, rawmode)
    pixels = np.require(pixels, requirements=["C_CONTIGUOUS", "WRITEABLE"])  # Pillow's arrays are read-only
    return orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation)
