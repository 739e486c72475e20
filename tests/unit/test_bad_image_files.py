"""Files that must not be decoded (decompression bombs, over ``max_image_pixels``) and files that cannot be
(empty, garbage) reach the corrupt-file policy on every decoder path, named, and never as a raw library error."""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from data_helpers import fake_predict_checkpoint, random_image, write_image_folder
from PIL import Image

from datamodules import (
    CIFARDataModule,
    DatasetError,
    ImageFolderDataModule,
    PredictFilesDataModule,
)
from datamodules.decoding import decoders
from datamodules.decoding.device_decode import decode_batch
from datamodules.decoding.encoded_images import EncodedImages, decode_bytes
from datamodules.errors import ImageDecodeError
from datamodules.sampling.draws import DrawIndex
from datamodules.sources.shard_writer import write_shards

needs_torchcodec = pytest.mark.skipif(decoders.TORCHCODEC is None, reason=f"torchcodec: {decoders.TORCHCODEC_MISSING}")


@pytest.fixture(params=[pytest.param("torchcodec", marks=needs_torchcodec), "pillow"])
def decoder(request, monkeypatch) -> str:
    monkeypatch.setattr(decoders, "ACTIVE", decoders.TORCHCODEC if request.param == "torchcodec" else decoders.PILLOW)
    return request.param


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG: ~110 KB on disk for 30000x30000, 2.7 GB once decoded to RGB."""
    rows = bytes(1 + (width + 7) // 8) * 1000  # per row: filter byte 0, then the packed bits
    assert height % 1000 == 0
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(rows) for _ in range(height // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return bomb_png(30000, 30000)


def test_a_30000x30000_png_is_refused_from_its_header_by_default(decoder, huge_png):
    """torchcodec decoded it into a 2.7 GB array without a word."""
    data = np.frombuffer(bytearray(huge_png), dtype=np.uint8)
    with pytest.raises(ImageDecodeError, match=r"30000x30000 pixels \(900\.0 Mpx\) is over the limit of 89\.5 Mpx"):
        decoders.decode_rgb(data)
    with pytest.raises(ImageDecodeError, match="max_image_pixels"):
        decoders.decode_jpegs([torch.from_numpy(data.copy())], torch.device("cpu"))


def test_the_pixel_limit_is_configurable_and_checked(decoder):
    data = np.frombuffer(bytearray(_encode(random_image(40, 50, 0), "PNG")), dtype=np.uint8)
    assert decode_bytes(data, max_pixels=2000).shape == (40, 50, 3)
    with pytest.raises(ImageDecodeError, match=r"50x40 pixels"):
        decode_bytes(data, max_pixels=1999)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_image_pixels must be a positive pixel count"):
            ImageFolderDataModule(root="x", num_classes=1, max_image_pixels=bad)


@pytest.mark.parametrize(
    "failure", [cv2.error("imdecode"), RuntimeError("torchcodec: bad"), SyntaxError("broken PNG"), IndexError("x")]
)
def test_any_decoder_failure_becomes_the_one_decode_error(monkeypatch, failure):
    """cv2.error was missing from the decode errors: a raw, file-less traceback ended training."""

    def fail(data: torch.Tensor) -> torch.Tensor:
        raise failure

    monkeypatch.setattr(decoders, "ACTIVE", decoders.ImageDecoder("failing", fail, lambda data, device: fail(data[0])))
    data = np.frombuffer(bytearray(_encode(random_image(8, 8, 0), "PNG")), dtype=np.uint8)
    with pytest.raises(ImageDecodeError, match=type(failure).__name__):
        decode_bytes(data)
    with pytest.raises(ImageDecodeError, match=type(failure).__name__):
        decoders.decode_jpegs([torch.from_numpy(data.copy())], torch.device("cpu"))


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


LIMIT = 64 * 64  # the "too big" files of the path tests are 80x80: small to make, over this limit
BAD_FILES = {
    "empty": (b"", "empty file"),
    "garbage": (b"\x89PNG\r\n\x1a\n not really", r"\w+Error: "),
    "over the limit": (_encode(random_image(80, 80, 1), "PNG"), r"80x80 pixels \(0\.0 Mpx\) is over the limit"),
    # a JPEG takes the reduced-size crop decode on the CPU train path (scaled_jpeg): the limit holds there too
    "JPEG over the limit": (_encode(random_image(80, 80, 1), "JPEG"), r"80x80 pixels \(0\.0 Mpx\) is over the limit"),
}


def _folder(tmp_path: Path, bad: bytes, name: str = "bad.png") -> Path:
    root = write_image_folder(tmp_path / "data", "train", ["a", "b"], per_class=2, size=(32, 32), fmt="PNG")
    (root / "train" / "a" / name).write_bytes(bad)  # sorted after 0000.png, 0001.png: index 2
    return root


@pytest.mark.parametrize("kind", BAD_FILES)
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_training_skips_a_bad_file_with_a_named_warning_or_stops_on_error(tmp_path, kind, decode, decoder):
    bad, reason = BAD_FILES[kind]
    root = _folder(tmp_path, bad)
    common = dict(root=str(root), num_classes=2, val_dir="train", image_size=32, num_workers=0, decode=decode)
    skip = ImageFolderDataModule(**common, max_image_pixels=LIMIT)
    skip.setup()
    with pytest.warns(UserWarning, match=rf"skipping unreadable image .*bad\.png \({reason}"):
        if decode == "cpu":
            sample = skip.train_set[2]
        else:
            encoded = [skip.train_set[i][0] for i in (1, 2)]
            batch = EncodedImages(encoded, [str(root / "train/a/0001.png"), str(root / "train/a/bad.png")], True)
            sample = skip.decode_on_device(batch, torch.tensor([0, 0]))
    assert skip.num_corrupt_skipped == 1 and len(sample) == 2
    stop = ImageFolderDataModule(**common, max_image_pixels=LIMIT, on_corrupt="error")
    stop.setup()
    with pytest.raises(DatasetError, match=rf"cannot decode image .*bad\.png \({reason}.*on_corrupt='skip'"):
        if decode == "cpu":
            stop.train_set[2]
        else:
            batch = EncodedImages([stop.train_set[2][0]], ["bad.png"], True)
            decode_batch(batch, torch.device("cpu"), stop.corrupt, LIMIT)


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_train_batch_made_in_one_piece_replaces_a_bad_file_as_indexing_does(tmp_path, kind):
    bad, reason = BAD_FILES[kind]
    root = _folder(tmp_path, bad)
    dm = ImageFolderDataModule(
        root=str(root), num_classes=2, val_dir="train", image_size=32, num_workers=0, max_image_pixels=LIMIT
    )
    dm.setup()
    indices = [DrawIndex(i, 3, 0) for i in (1, 2, 3)]  # 2 is bad.png: class b's first file takes its place
    with pytest.warns(UserWarning, match=rf"skipping unreadable image .*bad\.png \({reason}"):
        images, labels = dm.train_dataloader().collate_fn(dm.train_set.__getitems__(indices))
        samples = [dm.train_set[i] for i in indices]
    assert labels.tolist() == [0, 1, 1] and dm.num_corrupt_skipped == 2
    assert torch.equal(images, torch.stack([image.permute(2, 0, 1) for image, _ in samples]))


@pytest.mark.parametrize("kind", BAD_FILES)
def test_tar_shards_skip_a_bad_member_naming_shard_and_key(tmp_path, kind):
    bad, reason = BAD_FILES[kind]
    root = _folder(tmp_path, bad)
    write_shards(root / "train", tmp_path / "shards", "train", samples_per_shard=10, shuffle=False)
    dm = ImageFolderDataModule(
        root=str(tmp_path / "shards"), num_classes=2, train_dir="train-*.tar", val_dir="train-*.tar",
        image_size=32, num_workers=0, max_image_pixels=LIMIT,
    )  # fmt: skip
    dm.setup()
    with pytest.warns(UserWarning, match=rf"skipping unreadable image .*train-000000\.tar:00000002 \({reason}"):
        dm.val_set[2]
    assert dm.num_corrupt_skipped == 1


@pytest.mark.parametrize("kind", BAD_FILES)
def test_cifar_folder_leaves_a_bad_file_out_or_stops_naming_it(tmp_path, kind):
    """The CIFAR folder is decoded once at setup; a zero-byte file gave a raw cv2.error naming no file."""
    bad, reason = BAD_FILES[kind]
    root = write_image_folder(tmp_path, "train", [f"c{i}" for i in range(10)], per_class=2, size=(32, 32), fmt="PNG")
    (root / "train" / "c3" / "bad.png").write_bytes(bad)
    common = dict(source="folder", root=str(root), val_split="holdout", holdout_per_class=1, max_image_pixels=LIMIT)
    skip = CIFARDataModule(**common)
    with pytest.warns(UserWarning, match=rf"leaving out unreadable image .*c3/bad\.png \({reason}"):
        skip.setup()
    assert skip.num_corrupt_skipped == 1 and len(skip.train_set) == 10 and len(skip.val_set) == 10
    assert sorted(skip.val_set.labels.tolist()) == list(range(10))  # c3 still holds out its last readable image
    stop = CIFARDataModule(**common, on_corrupt="error")
    with pytest.raises(DatasetError, match=rf"cannot decode .*c3/bad\.png \({reason}.*on_corrupt: skip"):
        stop.setup()


@pytest.mark.parametrize("kind", BAD_FILES)
def test_predict_gives_a_bad_file_an_error_row(tmp_path, kind):
    """The CSV kept only its header: cv2.error escaped the predict loader."""
    bad, reason = BAD_FILES[kind]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.png").write_bytes(bad)
    (tmp_path / "in" / "good.png").write_bytes(_encode(random_image(40, 40, 0), "PNG"))
    ckpt = fake_predict_checkpoint(tmp_path)
    dm = PredictFilesDataModule(paths=[str(tmp_path / "in")], checkpoint=str(ckpt), max_image_pixels=LIMIT)
    dm.setup()
    (image, path, error), (_, _, good_error) = dm.predict_set[0], dm.predict_set[1]
    assert path.endswith("bad.png") and good_error == ""
    assert error and re.search(reason, error) and image.shape == (3, 32, 32)


def test_an_old_torchcodec_warns_loudly_once_and_names_the_fix(monkeypatch, caplog):
    """With torchcodec 0.7 or 0.15 every image fell back to Pillow without a word."""
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        return "0.15.0" if name == "torchcodec" else real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = importlib.reload(decoders)
        assert old.ACTIVE is old.PILLOW and old.TORCHCODEC is None
        messages = [str(w.message) for w in caught if "torchcodec" in str(w.message)]
        assert len(messages) == 1
        assert "torchcodec 0.15.0 is installed" in messages[0] and "pip install 'torchcodec>=0.16'" in messages[0]
    finally:
        monkeypatch.undo()
        importlib.reload(decoders)
    assert decoders.torchcodec_too_old("0.7.0") and not decoders.torchcodec_too_old("0.16.0")
    assert not decoders.torchcodec_too_old(None)


def _header_cases() -> list[tuple[str, bytes]]:
    image = Image.fromarray(random_image(37, 53, 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = b"\0" * 70000  # over one 64 KiB segment: the frame header comes after several APP2 segments
    out = []
    for name, img, fmt, kwargs in (
        ("baseline jpeg", image, "JPEG", {}),
        ("progressive jpeg", image, "JPEG", {"progressive": True}),
        ("jpeg with exif and a large icc profile", image, "JPEG", {"exif": exif.tobytes(), "icc_profile": icc}),
        ("grey jpeg", image.convert("L"), "JPEG", {}),
        ("cmyk jpeg", image.convert("CMYK"), "JPEG", {}),
        ("palette png", image.convert("P"), "PNG", {}),
        ("16-bit png", Image.fromarray(np.zeros((37, 53), np.uint16)), "PNG", {}),
        ("webp", image, "WEBP", {}),
        ("gif", image, "GIF", {}),
        ("bmp", image, "BMP", {}),
        ("tiff", image, "TIFF", {}),
    ):
        buffer = io.BytesIO()
        img.save(buffer, fmt, **kwargs)
        out.append((name, buffer.getvalue()))
    return out


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's word on the truncated TIFF
@pytest.mark.parametrize(("name", "data"), _header_cases(), ids=[name for name, _ in _header_cases()])
def test_header_size_reads_the_dimensions_without_decoding(name, data):
    from datamodules.decoding.header_size import header_size

    assert header_size(np.frombuffer(data, dtype=np.uint8)) == (53, 37)
    truncated = np.frombuffer(data[:40], dtype=np.uint8)
    assert header_size(truncated) in (None, (53, 37))  # never a wrong size


def test_header_size_of_garbage_is_unknown_and_left_to_the_decoder():
    from datamodules.decoding.header_size import header_size

    for data in (b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n", b"hello world" * 10):
        assert header_size(np.frombuffer(data, dtype=np.uint8)) is None


@needs_torchcodec
@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_are_not_decoded_frame_by_frame(monkeypatch, fmt):
    """torchcodec decodes every frame of a GIF or animated WebP: many frames under the pixel limit each would
    fill the memory, though only the first is used."""
    frames = [Image.fromarray(np.full((10, 12, 3), level, np.uint8)) for level in range(0, 250, 5)]
    buffer = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **extra)
    asked: list[int] = []
    real = decoders.torchcodec_decode_image

    def counting(data: torch.Tensor, mode: str) -> torch.Tensor:
        asked.append(1)
        return real(data, mode=mode)

    monkeypatch.setattr(decoders, "torchcodec_decode_image", counting)
    monkeypatch.setattr(decoders, "ACTIVE", decoders.TORCHCODEC)
    image = decode_bytes(np.frombuffer(bytearray(buffer.getvalue()), dtype=np.uint8))
    assert image.shape == (10, 12, 3) and (image == 0).all() and asked == []
    still = io.BytesIO()
    frames[1].save(still, "WEBP", lossless=True)  # a still WebP is torchcodec's
    decode_bytes(np.frombuffer(bytearray(still.getvalue()), dtype=np.uint8))
    assert asked == [1]
