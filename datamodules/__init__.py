"""LightningDataModules for image classification.

Every module yields ``(uint8 images [B,3,H,W], int64 labels [B])`` from its
loaders and normalises to float32 on the device in ``on_after_batch_transfer``.

``from datamodules import CIFARDataModule`` imports that DataModule's module only when it is asked for,
so a CIFAR run loads neither the tar-shard reader nor the device decoder.
"""

from __future__ import annotations

import importlib
from typing import Any

from datamodules.errors import DatasetError

_MODULES = {
    "CIFARDataModule": "datamodules.cifar",
    "ImageClassificationDataModule": "datamodules.base",
    "ImageFolderDataModule": "datamodules.image_folder",
    "PredictFilesDataModule": "datamodules.predict_files",
    "SyntheticDataModule": "datamodules.synthetic",
}

__all__ = ["DatasetError", *sorted(_MODULES)]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))
