"""A JPEG's size, colour components and EXIF orientation read from its marker segments directly: what the reduced-size
train decode needs before it decodes, about 20 times faster than opening the file with Pillow (which parses every
segment into Python objects), a tenth of the per-image time of a 470x410 crop.

Only plain cases are read here; anything unusual (several frames or EXIF blocks, XMP metadata, an orientation tag
of an odd type, a malformed segment) gives None, and the caller asks Pillow, so the result is always Pillow's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from datamodules.decoding.header_size import JPEG_FRAME_MARKERS, jpeg_segments

START_OF_SCAN = 0xDA
APP1 = 0xE1
EXIF_PREFIX = b"Exif\x00\x00"
XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/"  # Pillow reads tiff:Orientation from XMP when EXIF has none
ORIENTATION_TAG = 0x0112
TIFF_SHORT = 3
COMPONENT_MODES = {1: "L", 3: "RGB"}  # the modes Pillow gives grey and colour JPEGs; CMYK (4) is left to Pillow


class JpegHeader(NamedTuple):
    mode: str
    width: int
    height: int
    orientation: int  # EXIF orientation, 1 (upright) where absent or out of range, as Pillow reads it


def _orientation(tiff: bytes) -> int | None:
    """Orientation in an EXIF block's first IFD: 1 where the tag is absent or out of 1..8, None where the block
    is not plainly readable (then Pillow decides)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if int.from_bytes(tiff[entry : entry + 2], order) != ORIENTATION_TAG:
            continue
        if int.from_bytes(tiff[entry + 2 : entry + 4], order) != TIFF_SHORT:
            return None
        if int.from_bytes(tiff[entry + 4 : entry + 8], order) != 1:
            return None
        value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
        return value if 1 <= value <= 8 else 1
    return 1


def read_jpeg_header(data: np.ndarray) -> JpegHeader | None:
    """The header of JPEG bytes (1-D uint8) up to its first scan, or None where Pillow should read it."""
    view = memoryview(data)
    if bytes(view[:3]) != b"\xff\xd8\xff":
        return None
    frame: tuple[str, int, int] | None = None
    orientation: int | None = 1
    exif_seen = False
    for marker, position, length in jpeg_segments(view):
        segment_end = position + 2 + length
        if length < 2 or segment_end > len(view):
            return None
        if marker == START_OF_SCAN:
            return None if frame is None or orientation is None else JpegHeader(*frame, orientation)
        if marker in JPEG_FRAME_MARKERS:
            if frame is not None or length < 8:
                return None
            precision, height = view[position + 4], (view[position + 5] << 8) | view[position + 6]
            width, components = (view[position + 7] << 8) | view[position + 8], view[position + 9]
            if precision != 8 or components not in COMPONENT_MODES or not height or not width:
                return None
            frame = (COMPONENT_MODES[components], width, height)
        elif marker == APP1:
            body = bytes(view[position + 4 : segment_end])
            if body.startswith(XMP_PREFIX):
                return None
            if body.startswith(EXIF_PREFIX):
                if exif_seen:
                    return None
                exif_seen = True
                orientation = _orientation(body[len(EXIF_PREFIX) :])
    return None
