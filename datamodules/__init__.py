"""LightningDataModules for image classification.

Every module yields ``(uint8 images [B,3,H,W], int64 labels [B])`` from its
loaders and normalises to float32 on the device in ``on_after_batch_transfer``.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise

from datamodules.base import ImageClassificationDataModule  # noqa: E402
from datamodules.cifar import CIFARDataModule  # noqa: E402
from datamodules.errors import DatasetError  # noqa: E402
from datamodules.image_folder import ImageFolderDataModule  # noqa: E402
from datamodules.predict_files import PredictFilesDataModule  # noqa: E402
from datamodules.synthetic import SyntheticDataModule  # noqa: E402

__all__ = [
    "CIFARDataModule",
    "DatasetError",
    "ImageClassificationDataModule",
    "ImageFolderDataModule",
    "PredictFilesDataModule",
    "SyntheticDataModule",
]
