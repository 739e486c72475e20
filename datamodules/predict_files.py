"""Prediction on arbitrary image files with the preprocessing stored in a training checkpoint.

Used by ``cli.py predict`` together with ``lightning_modules.prediction.CsvPredictionWriter``::

    python cli.py predict --config logs/smoke/version_0/config.yaml --ckpt_path CKPT \\
        --data datamodules.PredictFilesDataModule --data.checkpoint CKPT --data.paths '[photos/]' \\
        --trainer.callbacks+=lightning_modules.prediction.CsvPredictionWriter \\
        --trainer.callbacks.output=predictions.csv --trainer.logger=false
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from coatnet.weights import read_torch_file
from datamodules.augmentation.transforms import EvalTransform, ResizeTo
from datamodules.base import ImageClassificationDataModule
from datamodules.decoding.encoded_images import DECODE_ERRORS, decode_bytes
from datamodules.decoding.formats import IMAGE_EXTENSIONS
from datamodules.decoding.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels
from datamodules.errors import DatasetError, decode_failure
from lightning_modules.prediction import DATA_INFO_KEY


def list_image_files(paths: list[str]) -> list[str]:
    """Expand ``paths``: folders to their image files (recursive, sorted), ``*.txt`` to the paths listed in them.

    Other paths are kept as given, even with unknown extensions or missing files: they become
    rows with an error rather than silently disappearing.
    """
    files: list[str] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            files += [str(p) for p in found if not p.name.startswith(".")]
        elif path.suffix.lower() == ".txt" and path.is_file():
            base = path.parent
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            files += [str(base / line) for line in lines if line and not line.startswith("#")]
        else:
            files.append(str(path))
    return files


def read_regular_file(path: str) -> np.ndarray:
    """The file's bytes; OSError for anything but a regular file: reading a FIFO or a device would block
    (or never end), so such a path becomes an error row instead of a hung run."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
        raise OSError(f"not a regular file ({kind}); predict reads image files only")
    return np.fromfile(path, dtype=np.uint8)


def load_rgb(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Any image file -> upright HWC uint8 RGB, decoded exactly as training and validation decode it."""
    return decode_bytes(read_regular_file(path), max_pixels)


class ImageFiles(Dataset):
    """``(image [3,H,W] uint8, path, error)`` per file; an unreadable file (or one over ``max_pixels``) gives zeros
    and its error text."""

    def __init__(
        self,
        files: list[str],
        transform: Callable[[np.ndarray], torch.Tensor],
        size: tuple[int, int],
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.files, self.transform, self.size, self.max_pixels = files, transform, size, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        path = self.files[index]
        try:
            return self.transform(load_rgb(path, self.max_pixels)), path, ""
        except DECODE_ERRORS as exc:
            return torch.zeros(3, *self.size, dtype=torch.uint8), path, decode_failure(exc)


SAFETENSORS_HEADER_BYTES = 8  # a little-endian header length, then the JSON header


def is_safetensors(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(SAFETENSORS_HEADER_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    length = int.from_bytes(head[:SAFETENSORS_HEADER_BYTES], "little")
    return len(head) > SAFETENSORS_HEADER_BYTES and head[-1:] == b"{" and length < size


def _weights_file_error(checkpoint: str, kind: str) -> DatasetError:
    return DatasetError(
        f"{checkpoint} is a weights file ({kind}), not a training checkpoint: --data.checkpoint needs the .ckpt a fit "
        "wrote (e.g. logs/<run>/version_0/checkpoints/last.ckpt), which also holds the class names and preprocessing. "
        "Pass that file as --data.checkpoint and --ckpt_path."
    )


def read_data_info(checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hyper_parameters, data_info)`` of a Lightning checkpoint written by this project."""
    if is_safetensors(checkpoint):
        raise _weights_file_error(checkpoint, "safetensors")
    state = read_torch_file(checkpoint, mmap=True)
    if isinstance(state, dict) and "state_dict" not in state and "hyper_parameters" not in state:
        raise _weights_file_error(checkpoint, "a state dict of tensors, no training state")
    info = state.get(DATA_INFO_KEY) if isinstance(state, dict) else None
    if info is None:
        raise DatasetError(
            f"{checkpoint} has no '{DATA_INFO_KEY}' entry (class names, preprocessing); it was written "
            "before they were stored. Re-save it from a fit, or predict with the training DataModule."
        )
    return state["hyper_parameters"], info


class PredictFilesDataModule(ImageClassificationDataModule):
    """Serves image files for ``predict`` with a checkpoint's class names and eval preprocessing.

    Batches are ``(images, paths, errors)``; the predict loader keeps file order.

    Args:
        paths: image files, folders (searched recursively) and/or ``.txt`` files listing paths.
        checkpoint: the training checkpoint; also pass it as ``--ckpt_path`` for the weights.
        batch_size: images per batch.
        num_workers: decoding processes (0 = in the main process).
        max_image_pixels: a file whose header declares more pixels gets an error row instead of being decoded
            (a decompression bomb); default Pillow's 89,478,485.
    """

    def __init__(
        self,
        *,
        paths: list[str],
        checkpoint: str,
        batch_size: int = 32,
        num_workers: int = 0,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        hparams, info = read_data_info(checkpoint)
        super().__init__(
            num_classes=int(hparams["num_classes"]),
            batch_size=batch_size,
            num_workers=num_workers,
            image_size=tuple(info["image_size"]),
            mean=tuple(info["mean"]),
            std=tuple(info["std"]),
        )
        self.paths, self.checkpoint = list(paths), checkpoint
        self.max_image_pixels = check_max_pixels(max_image_pixels)
        self.class_names = list(info["class_names"])
        self.resize, self.crop_pct, self.interpolation = info["resize"], info["crop_pct"], info["interpolation"]
        self.predict_set: ImageFiles | None = None

    def eval_transform(self) -> Callable[[np.ndarray], torch.Tensor]:
        if self.resize == "center_crop":
            return EvalTransform(self.image_size, self.crop_pct, self.interpolation)
        return ResizeTo(self.image_size, self.interpolation)

    def setup(self, stage: str | None = None) -> None:
        files = list_image_files(self.paths)
        if not files:
            raise DatasetError(f"no image files found in {self.paths}")
        self.predict_set = ImageFiles(files, self.eval_transform(), self.image_size, self.max_image_pixels)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, "predict", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, list[str], list[str]]:
        images, paths, errors = batch
        self.check_batch(images)
        return self.normalize(images), list(paths), list(errors)
