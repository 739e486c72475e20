"""Prediction on arbitrary image files with the preprocessing stored in a training checkpoint.

Used by ``cli.py predict`` together with ``lightning_modules.prediction.CsvPredictionWriter``::

    python cli.py predict --config logs/smoke/version_0/config.yaml --ckpt_path CKPT \\
        --data datamodules.PredictFilesDataModule --data.checkpoint CKPT --data.paths '[photos/]' \\
        --trainer.callbacks+=lightning_modules.prediction.CsvPredictionWriter \\
        --trainer.callbacks.output=predictions.csv --trainer.logger=false
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from coatnet.weights_io import read_torch_file
from datamodules.augmentation.transforms import EvalTransform, ResizeTo
from datamodules.base import ImageClassificationDataModule
from datamodules.decoding.encoded_images import DECODE_ERRORS, decode_bytes
from datamodules.errors import DatasetError
from datamodules.sources.folder_scan import IMAGE_EXTENSIONS
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


def load_rgb(path: str) -> np.ndarray:
    """Any image file -> upright HWC uint8 RGB, decoded exactly as training and validation decode it."""
    return decode_bytes(np.fromfile(path, dtype=np.uint8))


class ImageFiles(Dataset):
    """``(image [3,H,W] uint8, path, error)`` per file; an unreadable file gives zeros and its error text."""

    def __init__(self, files: list[str], transform: Callable[[np.ndarray], torch.Tensor], size: tuple[int, int]) -> None:
        self.files, self.transform, self.size = files, transform, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        path = self.files[index]
        try:
            return self.transform(load_rgb(path)), path, ""
        except DECODE_ERRORS as exc:
            return torch.zeros(3, *self.size, dtype=torch.uint8), path, f"{type(exc).__name__}: {exc}"


def read_data_info(checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hyper_parameters, data_info)`` of a Lightning checkpoint written by this project."""
    state = read_torch_file(checkpoint, mmap=True)
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
    """

    def __init__(self, *, paths: list[str], checkpoint: str, batch_size: int = 32, num_workers: int = 0) -> None:
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
        self.predict_set = ImageFiles(files, self.eval_transform(), self.image_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, "predict", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, list[str], list[str]]:
        images, paths, errors = batch
        self.check_batch(images)
        return self.normalize(images), list(paths), list(errors)
