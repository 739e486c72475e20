"""Image dimensions from the first bytes of a file, for the pixel limit: read before anything decodes.

PNG and JPEG (nearly every training image) are parsed here directly, several times faster than opening
them with Pillow, which parses every metadata segment too; other formats ask Pillow's header reader.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from datamodules.decoding.pillow_decode import own_pixel_limit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# start-of-frame markers (baseline, progressive, lossless, arithmetic...); C4, C8 and CC are other segments
JPEG_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_UNSIZED_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and restart markers have no length field


def _png_size(head: bytes) -> tuple[int, int] | None:
    """IHDR is the first chunk: width and height at bytes 16..24."""
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def jpeg_segments(data: memoryview) -> Iterator[tuple[int, int, int]]:
    """(marker, position, length field) of each sized marker segment after SOI, in file order; stops at the end
    of the data or at a byte that is not a marker (fill bytes and unsized markers are skipped)."""
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in JPEG_UNSIZED_MARKERS:
            position += 2
            continue
        length = (data[position + 2] << 8) | data[position + 3]
        yield marker, position, length
        position += 2 + length


def _jpeg_size(data: memoryview) -> tuple[int, int] | None:
    """The first start-of-frame segment: precision (1 byte), height, width (2 bytes each)."""
    for marker, position, _ in jpeg_segments(data):
        if marker in JPEG_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            height = (data[position + 5] << 8) | data[position + 6]
            width = (data[position + 7] << 8) | data[position + 8]
            return (width, height) if height else None  # height 0: given later (DNL), leave it to the decoder
    return None


def header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) of encoded bytes (1-D uint8), or None where the header cannot be read (the decoder then
    reads or refuses the file, and the decoded image is checked instead)."""
    head = data[:24].tobytes()
    if head.startswith(PNG_SIGNATURE):
        return _png_size(head)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(memoryview(data))
    try:
        with own_pixel_limit(), Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any header Pillow fails on is left to the decoders to read or refuse
        return None
