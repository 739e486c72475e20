"""Decoding is one function on every path: EXIF orientation, 16-bit/float scaling and colour modes come out the
same for train/val/test/predict, the CPU and device paths, and the torchcodec and Pillow decoders."""

from __future__ import annotations

import importlib
import io
import logging
import sys
import types
import warnings

import cv2
import numpy as np
import pytest
import torch
from data_helpers import random_image
from PIL import Image, ImageOps

from datamodules import ImageFolderDataModule
from datamodules.decoding import decoders
from datamodules.decoding.device_decode import decode_batch
from datamodules.decoding.encoded_images import (
    CorruptFiles,
    EncodedImages,
    decode_bytes,
)
from datamodules.predict_files import load_rgb
from datamodules.sources.cifar_folder import decode_to_chw

needs_torchcodec = pytest.mark.skipif(decoders.TORCHCODEC is None, reason=f"torchcodec: {decoders.TORCHCODEC_MISSING}")
BOTH = [pytest.param("torchcodec", marks=needs_torchcodec), "pillow"]


@pytest.fixture(params=BOTH)
def decoder(request, monkeypatch) -> str:
    """Run the test with each decoder in turn, as if it were the one chosen at import."""
    monkeypatch.setattr(decoders, "ACTIVE", decoders.TORCHCODEC if request.param == "torchcodec" else decoders.PILLOW)
    return request.param


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def _with_orientation(image: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(image), fmt, exif=exif.tobytes())


def _upright_reference(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def test_torchcodec_is_chosen_where_it_loads():
    if decoders.TORCHCODEC_MISSING is None:
        assert decoders.ACTIVE is decoders.TORCHCODEC
    else:
        assert decoders.ACTIVE is decoders.PILLOW


def _unloadable_libraries() -> types.ModuleType:
    module = types.ModuleType("torchcodec.decoders")

    def fail(name: str) -> None:
        raise OSError("libtorchcodec_core9.so: cannot open shared object file")

    module.__getattr__ = fail  # type: ignore[method-assign]
    return module


@pytest.mark.parametrize(
    ("stand_in", "reason"),
    [(None, "ModuleNotFoundError"), (_unloadable_libraries(), "OSError: libtorchcodec_core9.so")],
    ids=["not-installed", "libraries-fail"],
)
def test_a_torchcodec_that_cannot_load_falls_back_to_pillow_with_one_warning(monkeypatch, caplog, stand_in, reason):
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", stand_in)
    try:
        with caplog.at_level(logging.INFO, logger=decoders.__name__):
            fallback = importlib.reload(decoders)
        assert fallback.ACTIVE is fallback.PILLOW and fallback.TORCHCODEC is None
        records = [r for r in caplog.records if r.name == decoders.__name__]
        assert len(records) == 1 and records[0].levelno == logging.WARNING
        assert f"torchcodec cannot be loaded ({reason}" in records[0].getMessage()
        image = random_image(20, 30, 0)
        assert (
            fallback.decode_rgb(_bytes(_encode(Image.fromarray(image), "PNG"))).permute(1, 2, 0).numpy().tolist()
            == image.tolist()
        )
    finally:
        monkeypatch.undo()
        importlib.reload(decoders)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_like_pillow(decoder, orientation):
    data = _with_orientation(random_image(12, 20, orientation), orientation, fmt="PNG")  # lossless: exact
    assert decode_bytes(_bytes(data)).tolist() == _upright_reference(data).tolist()


def test_rotated_jpeg_is_upright_on_every_path(decoder, tmp_path):
    data = _with_orientation(random_image(20, 40, 3), 6)  # stored 20 high, 40 wide; shown 40 high, 20 wide
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    reference = _upright_reference(data)
    assert reference.shape == (40, 20, 3)
    assert decode_bytes(_bytes(data)).shape == (40, 20, 3)  # train, val and test (CPU workers)
    assert tuple(decode_to_chw(str(path)).shape) == (3, 40, 20)  # CIFAR-style folder held in memory
    assert load_rgb(str(path)).shape == (40, 20, 3)  # predict
    images, _ = decode_batch(
        EncodedImages([torch.from_numpy(_bytes(data))], [str(path)], False), torch.device("cpu"), CorruptFiles("error")
    )
    assert tuple(images[0].shape) == (3, 40, 20)  # device path
    assert np.abs(decode_bytes(_bytes(data)).astype(int) - reference).max() <= 1


def test_batched_cuda_fallback_applies_orientation_itself(monkeypatch):
    """torchvision's nvJPEG batch decode ignores EXIF: stand a CPU decode in for it and check the turn."""
    from torchvision.io import decode_jpeg

    monkeypatch.setattr(
        decoders, "torchvision_decode_jpeg", lambda data, mode, device: [decode_jpeg(d, mode=mode) for d in data]
    )
    data = [torch.from_numpy(_bytes(_with_orientation(random_image(20, 40, k), k))) for k in (1, 3, 6)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision's own notice; the real path shows it
        images = decoders._fallback_jpegs(data, torch.device("cuda"))
    expected = [decoders.PILLOW.decode(d) for d in data]
    assert [tuple(i.shape) for i in images] == [(3, 20, 40), (3, 20, 40), (3, 40, 20)]
    assert all((i.int() - e.int()).abs().max() <= 1 for i, e in zip(images, expected))


def test_16_bit_png_is_scaled_not_clipped(decoder):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    grey = decode_bytes(_bytes(_encode(Image.fromarray(ramp), "PNG")))
    expected = np.round(ramp / 257).astype(np.uint8)
    assert grey[..., 0].tolist() == expected.tolist() and (grey == grey[..., :1]).all()
    assert abs(grey.mean() - 127.5) < 0.5  # was 254.5: every sample above 255 clipped to white
    colour = np.random.default_rng(0).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    decoded = decode_bytes(_bytes(cv2.imencode(".png", colour[..., ::-1])[1].tobytes()))
    assert decoded.tolist() == np.round(colour / 257).astype(np.uint8).tolist()


def test_float_tiff_in_unit_range_is_scaled_and_other_ranges_are_refused(decoder):
    values = np.linspace(0, 1, 12 * 8, dtype=np.float32).reshape(12, 8)
    grey = decode_bytes(_bytes(_encode(Image.fromarray(values), "TIFF")))
    assert grey[..., 1].tolist() == np.round(values * 255).astype(np.uint8).tolist()  # was all black
    colour = decode_bytes(_bytes(cv2.imencode(".tiff", np.stack([values, values / 2, values / 4], -1))[1].tobytes()))
    assert colour[..., 0].tolist() == np.round(values / 4 * 255).astype(np.uint8).tolist()  # OpenCV gives BGR
    with pytest.raises(ValueError, match=r"float samples range 0\.\.255; only floats in \[0, 1\]"):
        decode_bytes(_bytes(_encode(Image.fromarray(values * 255), "TIFF")))


def test_refused_samples_are_named_with_the_file(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(random_image(8, 8, 0)).save(tmp_path / "train" / "a" / "fine.png")
    Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(tmp_path / "train" / "a" / "hdr.tif")
    dm = ImageFolderDataModule(
        root=str(tmp_path), num_classes=1, val_dir="train", image_size=32, num_workers=0, on_corrupt="error"
    )
    dm.setup()
    with pytest.raises(Exception, match=r"cannot decode image .*hdr\.tif \(ValueError: float samples range 300\.\.300"):
        dm.val_set[1]


def _modes() -> list[tuple[str, bytes]]:
    image = Image.fromarray(random_image(16, 24, 5))
    palette = image.convert("P")
    rgba = np.dstack([random_image(16, 24, 6), np.linspace(0, 255, 16 * 24).astype(np.uint8).reshape(16, 24)])
    frames = [Image.fromarray(np.full((10, 12, 3), level, np.uint8)) for level in (30, 120, 210)]
    return [
        ("grey png", _encode(image.convert("L"), "PNG")),
        ("1-bit png", _encode(image.convert("1"), "PNG")),
        ("palette png", _encode(palette, "PNG")),
        ("palette png with transparency", _encode(palette, "PNG", transparency=0)),
        ("rgba png", _encode(Image.fromarray(rgba, "RGBA"), "PNG")),
        ("grey+alpha png", _encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG")),
        ("grey jpeg", _encode(image.convert("L"), "JPEG")),
        ("cmyk jpeg", _encode(image.convert("CMYK"), "JPEG")),
        ("rgba webp", _encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True)),
        ("bmp", _encode(image, "BMP")),
        ("animated gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])),
    ]


@pytest.mark.parametrize(("mode", "data"), _modes(), ids=[name for name, _ in _modes()])
def test_colour_modes_become_the_same_rgb_with_either_decoder(mode, data):
    pillow = decoders.PILLOW.decode(torch.from_numpy(_bytes(data)))
    with Image.open(io.BytesIO(data)) as image:
        assert pillow.permute(1, 2, 0).numpy().tolist() == np.asarray(image.convert("RGB")).tolist()  # alpha dropped
    if decoders.TORCHCODEC is not None:
        assert torch.equal(decoders.TORCHCODEC.decode(torch.from_numpy(_bytes(data))), pillow)


def test_decoding_on_every_path_shows_no_warning(tmp_path):
    data = _with_orientation(random_image(20, 40, 3), 6)
    (tmp_path / "x.jpg").write_bytes(data)
    png = torch.from_numpy(_bytes(_encode(Image.fromarray(random_image(8, 8, 1)), "PNG")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_bytes(_bytes(data))
        decode_to_chw(str(tmp_path / "x.jpg"))
        load_rgb(str(tmp_path / "x.jpg"))
        batch = EncodedImages([torch.from_numpy(_bytes(data)), png], ["x.jpg", "y.png"], False)
        decode_batch(batch, torch.device("cpu"), CorruptFiles("error"))
    assert [str(w.message) for w in caught] == []


def test_device_path_decodes_formats_the_cpu_path_reads():
    """BMP and TIFF were refused as corrupt on the device path (torchvision cannot read them)."""
    image = random_image(10, 14, 2)
    files = [_encode(Image.fromarray(image), "BMP"), _encode(Image.fromarray(image), "TIFF")]
    corrupt = CorruptFiles("skip")
    batch = EncodedImages([torch.from_numpy(_bytes(f)) for f in files], ["a.bmp", "a.tif"], False)
    images, sources = decode_batch(batch, torch.device("cpu"), corrupt)
    assert sources == [0, 1] and corrupt.count == 0
    assert all(i.permute(1, 2, 0).numpy().tolist() == image.tolist() for i in images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_cuda_batch_decode_matches_the_cpu_decode_and_orientation(decoder):
    data = [torch.from_numpy(_bytes(_with_orientation(random_image(20, 40, k), k))) for k in (1, 3, 6, 8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the torchvision fallback's own notice
        images = decoders.decode_jpegs(data, torch.device("cuda"))
    for image, encoded in zip(images, data):
        expected = decoders.decode_rgb(encoded)
        assert image.is_cuda and image.shape == expected.shape
        assert (
            image.cpu().int() - expected.int()
        ).abs().float().mean() < 1.0  # nvJPEG's IDCT may differ from libjpeg's
