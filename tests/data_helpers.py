"""Test data builders shared by the data and training tests (fake files, local HTTP, real-data subset)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import pickle
import re
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_JPEG_MEMBER = re.compile(r"^(?:\./)?train/([a-z_]+)/(\d+)\.jpg$")


def shared_data_dir() -> Path:
    """``../shared/data`` next to the repository, or ``$COATNET_SHARED_DATA``."""
    override = os.environ.get("COATNET_SHARED_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def extract_cifar_jpeg_subset(dest: Path, per_class: int) -> Path | None:
    """Extract the first ``per_class`` JPEGs of every class from the shared CIFAR-10 tarball.

    Returns ``dest`` (holding ``train/<class>/*.jpg``) or None when the tarball is absent.
    Only names matching ``train/<class>/<digits>.jpg`` are written, so the
    archive cannot place files elsewhere.
    """
    archive = shared_data_dir() / "cifar10-jpeg-train.tar.gz"
    if not archive.is_file():
        return None
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            match = _JPEG_MEMBER.match(member.name)
            if not member.isfile() or match is None or int(match.group(2)) >= per_class:
                continue
            target = dest / "train" / match.group(1) / f"{match.group(2)}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return dest


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (compresses like a photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def write_image_folder(
    root: Path, split: str, classes: list[str], per_class: int, size: tuple[int, int] = (30, 40), fmt: str = "JPEG"
) -> Path:
    """Write ``root/split/<class>/<i>.<ext>`` images of ``size`` (height, width)."""
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(random_image(*size, seed=1000 * c + i)).save(folder / f"{i:04d}.{ext}", fmt, quality=90)
    return root


def write_fake_cifar(root: Path, variant: str, train_per_class: int, test_per_class: int) -> dict[str, np.ndarray]:
    """Write a tiny dataset in the official python-pickle layout; returns the arrays written.

    Images encode their label in pixel (0, 0) of the red plane, so tests can check image/label pairing.
    """
    num_classes = 10 if variant == "cifar10" else 100
    rng = np.random.default_rng(0)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.tile(np.arange(num_classes), per_class)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, 0] = labels
        return data, labels

    train_x, train_y = split(train_per_class)
    test_x, test_y = split(test_per_class)
    names = [f"class_{i:03d}".encode() for i in range(num_classes)]
    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, (x, y) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), start=1):
            _dump(folder / f"data_batch_{i}", {b"data": x, b"labels": y.tolist()})
        _dump(folder / "test_batch", {b"data": test_x, b"labels": test_y.tolist()})
        _dump(folder / "batches.meta", {b"label_names": names})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        _dump(
            folder / "train",
            {b"data": train_x, b"fine_labels": train_y.tolist(), b"coarse_labels": (train_y // 5).tolist()},
        )
        _dump(
            folder / "test",
            {b"data": test_x, b"fine_labels": test_y.tolist(), b"coarse_labels": (test_y // 5).tolist()},
        )
        _dump(folder / "meta", {b"fine_label_names": names})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_tar_gz(source: Path, archive: Path) -> Path:
    """Pack ``source`` (a folder) into ``archive`` with the folder as the top-level entry."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return archive


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 in a thread; yields the base URL."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def fake_predict_checkpoint(tmp_path: Path) -> Path:
    """A .ckpt with only what ``PredictFilesDataModule`` reads: a 2-class folder's data_info, 32 px."""
    import torch

    from datamodules import ImageFolderDataModule
    from lightning_modules.prediction import data_info

    folder = ImageFolderDataModule(root=str(tmp_path), num_classes=2, image_size=32)
    folder.class_names = ["a", "b"]
    ckpt = tmp_path / "fake.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 2}, "state_dict": {}, "data_info": data_info(folder)}, ckpt)
    return ckpt
