"""A CIFAR-sized image folder (``<split>/<class>/<image>``) decoded once into one uint8 tensor.

Small images cost more to open than to decode, so reading the folder once at setup and serving
from memory is faster than decoding in loader workers every epoch, and it lets a JPEG copy of
CIFAR use exactly the in-memory pipeline of the official pickles.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from datamodules.decoding.decoders import DEFAULT_MAX_IMAGE_PIXELS, decode_rgb
from datamodules.decoding.encoded_images import DECODE_ERRORS, OnCorrupt
from datamodules.errors import DatasetError, decode_failure
from datamodules.sources.folder_scan import check_same_classes, list_classes, scan_split


def find_split(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``root/<name>`` that exists, or None."""
    return next((root / name for name in names if (root / name).is_dir()), None)


def decode_to_chw(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """CHW uint8 RGB, decoded as every other path decodes (``decoders.decode_rgb``); a file that cannot be read
    or decoded, or is over ``max_pixels``, stops the load naming it (the folder is read once, at setup)."""
    try:
        return decode_rgb(np.fromfile(path, dtype=np.uint8), max_pixels)
    except DECODE_ERRORS as exc:
        raise DatasetError(
            f"cannot decode {path} ({decode_failure(exc)}); replace or delete the file, or set on_corrupt: skip "
            "to leave it out."
        ) from exc


def load_image_folder(
    split_dir: Path,
    classes: list[str],
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    on_corrupt: OnCorrupt = "error",
) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """Decode every image under ``split_dir`` into ([N,3,H,W] uint8, [N] int64), labels by ``classes`` order, and
    count the unreadable files left out (``on_corrupt: skip``, each with a warning naming it; "error" stops).

    Within a class, images keep sorted file-name order, so "the last N of each class" is well defined.
    ``classes`` must be the split's class folders (callers check a test split against train).
    """
    files = scan_split(split_dir, classes)
    images = torch.empty(len(files), 3, *size, dtype=torch.uint8)
    readable = np.ones(len(files), dtype=bool)
    for index in range(len(files)):
        try:
            image = decode_to_chw(files.path(index), max_pixels)
        except DatasetError as exc:
            if on_corrupt == "error":
                raise
            reason = decode_failure(exc.__cause__)  # type: ignore[arg-type] - decode_to_chw raises from the cause
            warnings.warn(f"leaving out unreadable image {files.path(index)} ({reason})", stacklevel=2)
            readable[index] = False
            continue
        if tuple(image.shape[-2:]) != size:
            raise DatasetError(
                f"{files.path(index)} is {image.shape[-1]}x{image.shape[-2]} pixels, but this dataset holds "
                f"{size[1]}x{size[0]} images; resize the folder, or use datamodules.ImageFolderDataModule "
                "for other sizes."
            )
        images[index] = image
    keep = torch.from_numpy(readable)
    return (images[keep], torch.from_numpy(files.labels)[keep]), int((~readable).sum())


def load_cifar_folder(
    root: Path,
    variant: str,
    num_classes: int,
    needs_test: bool,
    size: tuple[int, int],
    max_pixels: int,
    on_corrupt: OnCorrupt = "error",
) -> tuple[list[str], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None, int]:
    """Class names, the decoded ``root/train`` and ``root/test`` (or ``root/val``; None when neither exists), and
    the number of unreadable files left out of them (see ``load_image_folder``).

    A class count other than ``variant``'s, or no test split where ``needs_test`` (``val_split: test``), stops
    the load naming the fix; a test split must have train's class folders.
    """
    classes = list_classes(root / "train")
    if len(classes) != num_classes:
        raise DatasetError(
            f"{variant} has {num_classes} classes but {root / 'train'} has {len(classes)} "
            "class folders; fix the folder or choose the matching variant."
        )
    test_dir = find_split(root, ("test", "val"))
    if test_dir is None and needs_test:
        raise DatasetError(
            f"val_split: test needs {root}/test/<class>/ or {root}/val/<class>/; "
            "add one, or set val_split: holdout to validate on held-out training images."
        )
    train, skipped = load_image_folder(root / "train", classes, size, max_pixels, on_corrupt)
    if test_dir is None:
        return classes, train, None, skipped
    check_same_classes(classes, list_classes(test_dir), root / "train", test_dir)
    test, test_skipped = load_image_folder(test_dir, classes, size, max_pixels, on_corrupt)
    return classes, train, test, skipped + test_skipped
