"""The JPEG header read of the reduced-size train decode agrees with Pillow wherever it answers, and answers for
ordinary photos (else the train loader would silently fall back to the slower Pillow read)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from data_helpers import random_image
from PIL import Image

from datamodules.decoding.jpeg_header import JpegHeader, read_jpeg_header
from datamodules.decoding.orientation import exif_orientation


def _save(image: Image.Image, **options: object) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _pillow(data: np.ndarray) -> JpegHeader:
    with Image.open(io.BytesIO(data.tobytes())) as image:
        return JpegHeader(image.mode, *image.size, exif_orientation(image))


def _tiff(order: str, entries: list[tuple[int, int, int, int]]) -> bytes:
    """A TIFF block with one IFD of (tag, type, count, value) entries, in byte order "<" or ">"."""
    head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    body = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack(order + "HHIHH", tag, kind, count, value, 0)
    return head + body + struct.pack(order + "I", 0)


def _with_exif(image: Image.Image, tiff: bytes) -> np.ndarray:
    return _save(image, exif=b"Exif\x00\x00" + tiff)


RGB = Image.fromarray(random_image(30, 50, 0))


@pytest.mark.parametrize("orientation", [*range(1, 9), 0, 9])
@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_orientation_is_read_as_pillow_reads_it(orientation: int, order: str) -> None:
    data = _with_exif(RGB, _tiff(order, [(0x010F, 2, 1, 0), (0x0112, 3, 1, orientation)]))
    expected = JpegHeader("RGB", 50, 30, orientation if 1 <= orientation <= 8 else 1)
    assert read_jpeg_header(data) == _pillow(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        _save(RGB),
        _save(RGB, progressive=True),
        _save(RGB.convert("L")),
        _save(RGB, exif=Image.Exif().tobytes()),  # EXIF without an orientation
        _save(RGB, icc_profile=b"\x00" * 300, comment=b"hello"),
    ],
    ids=["plain", "progressive", "grey", "exif-no-orientation", "icc-and-comment"],
)
def test_ordinary_jpegs_are_read_without_pillow_and_agree(data: np.ndarray) -> None:
    header = read_jpeg_header(data)
    assert header is not None and header == _pillow(data)


@pytest.mark.parametrize(
    "data",
    [
        _save(RGB.convert("CMYK")),
        _save(RGB, xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'),
        _with_exif(RGB, _tiff("<", [(0x0112, 4, 1, 6)])),  # a LONG orientation
        _with_exif(RGB, b"XX" + b"\x00" * 10),  # neither byte order
        np.frombuffer(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, dtype=np.uint8),
        _save(RGB)[:20],  # cut before the frame header
    ],
    ids=["cmyk", "xmp", "long-orientation", "bad-tiff", "png", "truncated-header"],
)
def test_unusual_headers_are_left_to_pillow(data: np.ndarray) -> None:
    assert read_jpeg_header(data) is None
