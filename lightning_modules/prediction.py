"""What a checkpoint must remember about its data, and a CSV writer for ``cli.py predict``.

``data_info`` is stored in every checkpoint (``ImageClassifier.on_save_checkpoint``) so that
prediction and export need neither the training data nor its DataModule: class names and the
evaluation preprocessing (mean/std on the 0..1 scale, input size, resize mode, crop fraction and
interpolation) travel with the weights.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

DATA_INFO_KEY = "data_info"


def data_info(datamodule: Any) -> dict[str, Any]:
    """Class names and evaluation preprocessing of a DataModule, as plain (``weights_only``-safe) values.

    ``resize`` is "center_crop" (short side to ``size / crop_pct``, then a centred crop: ImageNet
    style) when the DataModule has a ``crop_pct`` and no "cifar" preset, otherwise "resize" (the
    whole image scaled to the input size, as the CIFAR and synthetic pipelines do).
    """
    crop_pct = getattr(datamodule, "crop_pct", None)
    center_crop = crop_pct is not None and getattr(datamodule, "preset", "imagenet") != "cifar"
    return {
        "class_names": [str(name) for name in datamodule.class_names],
        "mean": [float(m) for m in datamodule.mean],
        "std": [float(s) for s in datamodule.std],
        "image_size": [int(s) for s in datamodule.image_size],
        "resize": "center_crop" if center_crop else "resize",
        "crop_pct": float(crop_pct) if center_crop else 1.0,
        "interpolation": str(getattr(datamodule, "interpolation", "bicubic")),
    }


def store_data_info(checkpoint: dict[str, Any], trainer: Trainer | None) -> None:
    """Put the attached DataModule's ``data_info`` in ``checkpoint`` (nothing without one that names classes)."""
    datamodule = trainer.datamodule if trainer is not None else None
    if datamodule is not None and hasattr(datamodule, "class_names"):
        checkpoint[DATA_INFO_KEY] = data_info(datamodule)


def csv_header(top_k: int) -> list[str]:
    """``path, top1_class, top1_prob, ..., top{k}_class, top{k}_prob, error``."""
    return ["path", *[f"top{i}_{field}" for i in range(1, top_k + 1) for field in ("class", "prob")], "error"]


class CsvPredictionWriter(BasePredictionWriter):
    """Writes one CSV row per input file from ``ImageClassifier.predict_step`` outputs.

    Expects batches ``(images, paths, errors)`` (see ``datamodules.PredictFilesDataModule``);
    files that could not be read get empty class/probability cells and their error message.
    Class names come from the DataModule's ``class_names``. With several processes each rank
    writes ``<output>.rank<r>``.

    Args:
        output: CSV file to write (parent folders are created).
    """

    def __init__(self, output: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self._file: Any = None
        self._writer: Any = None
        self._rows = 0
        self._errors = 0

    def _path(self, trainer: Trainer) -> Path:
        path = Path(self.output)
        return path.with_name(f"{path.name}.rank{trainer.global_rank}") if trainer.world_size > 1 else path

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            rank_zero_warn(f"{path} exists and is replaced by these predictions; set another output to keep it.")
        self._file = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(csv_header(pl_module.top_k))
        self._rows = self._errors = 0

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, torch.Tensor],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        _, paths, errors = batch
        names = getattr(trainer.datamodule, "class_names", None)
        classes, probs = prediction["classes"].tolist(), prediction["probs"].tolist()
        for path, error, top_classes, top_probs in zip(paths, errors, classes, probs):
            if error:
                self._errors += 1
                self._writer.writerow([path, *[""] * (2 * len(top_classes)), error])
                continue
            cells = [v for c, p in zip(top_classes, top_probs) for v in (names[c] if names else c, f"{p:.6f}")]
            self._writer.writerow([path, *cells, ""])
        self._rows += len(paths)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._errors:
            rank_zero_warn(
                f"{self._errors} of {self._rows} files could not be read; see the error column of {self.output}."
            )
