"""Random-resized crops decoded at reduced size: the crop box is drawn from the header's size and EXIF
orientation (read from the marker segments by ``jpeg_header``, or by Pillow where that declines), then a JPEG
is decoded at the smallest DCT scale (1/2, 1/4, 1/8) at which the box still covers the output size
(libjpeg-turbo's scaled decoding, through simplejpeg, straight into an RGB numpy array), and only the box is
resized.

A 2000x1500 photo cropped to 224x224 then decodes at 1/4 or 1/8 of its area or less (the entropy decoding
of the whole file remains). simplejpeg decodes straight to RGB with libjpeg-turbo's accurate IDCT, so a full-size
decode gives Pillow's pixels exactly, about 1.08x faster than OpenCV's decode plus its BGR->RGB conversion.
(Its fast IDCT would add about 4% for an error of one grey level. Scales other than powers of two decode slower than
the next larger power-of-two scale, 5/8 to 7/8 slower even than full size: on a 2000x1500 photo 3/8 took 6.9-7.5 ms
against 6.0-6.4 at 1/2, and 5/8-7/8 11-19 ms against 8.2 at full size.)
The pixels are those ``decoders`` gives (upright per EXIF, RGB); other formats,
CMYK and possibly truncated JPEGs are decoded whole by ``decoders.decode_rgb``, so 16-bit handling and the
decode errors stay those of every other path.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image

from datamodules.augmentation.crops import CropBox
from datamodules.decoding.decoders import (
    DEFAULT_MAX_IMAGE_PIXELS,
    as_bytes_tensor,
    check_header,
    decode_rgb,
    refuse_over_limit,
)
from datamodules.decoding.jpeg_header import read_jpeg_header
from datamodules.decoding.orientation import exif_orientation
from datamodules.decoding.pillow_decode import own_pixel_limit

COLOUR_MODES = frozenset({"RGB", "L"})  # JPEG modes (YCbCr colour, grey) libjpeg-turbo decodes to RGB as Pillow does
DCT_SCALES = (8, 4, 2)
JPEG_END = b"\xff\xd9"
CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
ChooseBox = Callable[[int, int], CropBox]  # (upright height, width) -> the crop box in upright pixels
_SCRATCH = threading.local()  # each thread's decode buffer, reused from image to image


def _scratch(nbytes: int) -> np.ndarray:
    """A buffer of at least ``nbytes`` for the decoded image (only its crop is kept): a fresh half-megabyte
    array per image cost 2-6% of the decode."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or len(buffer) < nbytes:
        buffer = _SCRATCH.buffer = np.empty(nbytes, np.uint8)
    return buffer


def _region(box: CropBox, scale: tuple[float, float], height: int, width: int) -> tuple[int, int, int, int]:
    """``box`` (in full-size pixels) in an image decoded at ``scale`` = (y, x) of that size, as
    (left, top, right, bottom)."""
    sy, sx = scale
    top, left = int(box.top * sy), int(box.left * sx)
    bottom = max(top + 1, min(height, round((box.top + box.height) * sy)))
    right = max(left + 1, min(width, round((box.left + box.width) * sx)))
    return left, top, right, bottom


def _resize(crop: np.ndarray, size: tuple[int, int], interpolation: str, out: np.ndarray | None = None) -> np.ndarray:
    """HWC uint8 crop -> HWC uint8 at ``size`` (written into ``out`` when given): area-averaged by a whole factor
    while it shrinks 2x or more, then the recipe's filter for the last step (less than 2x, where it barely aliases).

    OpenCV's area filter by a whole factor is its fast path; by a fractional one it costs several decodes.
    After a DCT-scaled decode the crop is already less than twice the output, so only crops that could not be
    decoded smaller take the first step.
    """
    fy, fx = crop.shape[0] // size[0], crop.shape[1] // size[1]
    if max(fy, fx) >= 2:
        fy, fx = max(fy, 1), max(fx, 1)
        whole = crop[: crop.shape[0] // fy * fy, : crop.shape[1] // fx * fx]
        crop = cv2.resize(whole, None, fx=1 / fx, fy=1 / fy, interpolation=cv2.INTER_AREA)
    return cv2.resize(crop, (size[1], size[0]), dst=out, interpolation=CV2_INTERPOLATION[interpolation])


def _dct_scale(box: CropBox, size: tuple[int, int]) -> int:
    """The largest DCT scale divisor (8, 4, 2) at which ``box`` still has at least ``size``'s pixels, else 1."""
    return next((s for s in DCT_SCALES if box.height >= s * size[0] and box.width >= s * size[1]), 1)


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """HWC pixels stored with EXIF ``orientation``, turned upright (a view)."""
    if orientation >= 5:
        pixels = pixels.transpose(1, 0, 2)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    return np.flip(pixels, flips) if flips else pixels


def _header(data: np.ndarray, max_pixels: int) -> tuple[str | None, str, tuple[int, int], int] | None:
    """(format, mode, (width, height), EXIF orientation), as Pillow reads them; None where Pillow cannot. Raises
    ``ImageDecodeError`` for an empty file or a declared size over ``max_pixels``, before anything decodes."""
    fast = read_jpeg_header(data)
    if fast is not None:  # the marker walk has read the size: no second read of the header
        refuse_over_limit(fast.width, fast.height, max_pixels)
        return "JPEG", fast.mode, (fast.width, fast.height), fast.orientation
    check_header(as_bytes_tensor(data), max_pixels)
    try:
        with own_pixel_limit(), Image.open(io.BytesIO(data)) as image:  # reads the header only
            return image.format, image.mode, image.size, exif_orientation(image)
    except Exception:  # noqa: BLE001 - not for Pillow (or not an image): decode_rgb reads it or says why not
        return None


def _crop_of_full_decode(
    full: torch.Tensor, box: CropBox, size: tuple[int, int], interpolation: str, out: np.ndarray | None
) -> np.ndarray:
    """``box`` of a CHW image decoded whole by ``decoders.decode_rgb``, resized: the path of every file the reduced
    decode does not take."""
    left, top, right, bottom = _region(box, (1.0, 1.0), *full.shape[-2:])
    crop = np.ascontiguousarray(full[:, top:bottom, left:right].permute(1, 2, 0).numpy())
    return _resize(crop, size, interpolation, out)


def decode_resized_crop(
    data: np.ndarray,
    choose_box: ChooseBox,
    size: tuple[int, int],
    interpolation: str,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Encoded bytes -> the chosen crop, upright, as HWC uint8 RGB at ``size`` (written into ``out``, a contiguous
    [H, W, 3] uint8 array, when given); raises ``ImageDecodeError`` for corrupt data or a header declaring more than
    ``max_pixels`` (checked before anything decodes)."""
    header = _header(data, max_pixels)
    # a JPEG that does not end in its end-of-image marker may be truncated: decode_rgb refuses those
    if header is None or header[0] != "JPEG" or header[1] not in COLOUR_MODES or bytes(data[-2:]) != JPEG_END:
        full = decode_rgb(data, max_pixels)
        return _crop_of_full_decode(full, choose_box(*full.shape[-2:]), size, interpolation, out)
    _, _, (width, height), orientation = header
    upright_hw = (width, height) if orientation >= 5 else (height, width)
    box = choose_box(*upright_hw)
    divisor = _dct_scale(box, size)
    scaled_h, scaled_w = -(-height // divisor), -(-width // divisor)  # libjpeg-turbo rounds scaled sizes up
    try:  # the smallest libjpeg-turbo output of at least 1/divisor the stored size is exactly 1/divisor
        stored = simplejpeg.decode_jpeg(
            data, min_height=scaled_h, min_width=scaled_w, colorspace="RGB", buffer=_scratch(scaled_h * scaled_w * 3)
        )
    except ValueError:  # damage libjpeg-turbo's strict mode refuses (data corrupt mid-scan) may be what Pillow
        # tolerates: the evaluation decoder decides, so a file is corrupt on every path or on none
        return _crop_of_full_decode(decode_rgb(data, max_pixels), box, size, interpolation, out)
    pixels = _upright(stored, orientation)
    scale = (pixels.shape[0] / upright_hw[0], pixels.shape[1] / upright_hw[1])
    left, top, right, bottom = _region(box, scale, *pixels.shape[:2])
    crop = pixels[top:bottom, left:right]
    return _resize(crop if orientation == 1 else np.ascontiguousarray(crop), size, interpolation, out)
