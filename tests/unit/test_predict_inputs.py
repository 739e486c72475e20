"""Predict's inputs and output: what is not an image file or not a training checkpoint is said plainly."""

from __future__ import annotations

import os
import threading
import warnings
from types import SimpleNamespace

import pytest
import torch
from data_helpers import fake_predict_checkpoint
from safetensors.torch import save_file

from datamodules import DatasetError, PredictFilesDataModule
from lightning_modules.prediction import CsvPredictionWriter


def test_a_fifo_becomes_an_error_row_instead_of_a_hang(tmp_path):
    """Reading a FIFO blocked forever (and the run ignored SIGTERM)."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    dm = PredictFilesDataModule(paths=[str(fifo)], checkpoint=str(fake_predict_checkpoint(tmp_path)))
    dm.setup()
    result: list = []
    reader = threading.Thread(target=lambda: result.append(dm.predict_set[0]), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "reading the FIFO blocked"
    image, path, error = result[0]
    assert path == str(fifo) and error == "OSError: not a regular file (a FIFO); predict reads image files only"


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_a_weights_file_as_data_checkpoint_is_named_as_such(tmp_path, kind):
    """It was blamed on its age ("written before they were stored") or called truncated."""
    weights = {"stem.weight": torch.zeros(2, 2)}
    path = tmp_path / f"model.{kind}"
    if kind == "pth":
        torch.save(weights, path)
    else:
        save_file(weights, str(path))
    message = rf"model\.{kind} is a weights file .*not a training checkpoint.*--ckpt_path"
    with pytest.raises(DatasetError, match=message):
        PredictFilesDataModule(paths=[str(tmp_path)], checkpoint=str(path))


def test_an_old_checkpoint_without_data_info_is_still_told_so(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 2}, "state_dict": {}}, path)
    with pytest.raises(DatasetError, match="has no 'data_info' entry"):
        PredictFilesDataModule(paths=[str(tmp_path)], checkpoint=str(path))


def test_an_existing_output_file_is_replaced_with_a_warning(tmp_path):
    output = tmp_path / "predictions.csv"
    trainer, module = SimpleNamespace(world_size=1, global_rank=0), SimpleNamespace(top_k=2)
    fresh = CsvPredictionWriter(str(output))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.on_predict_epoch_start(trainer, module)
    fresh.on_predict_epoch_end(trainer, module)
    assert [str(w.message) for w in caught] == [], "a new file needs no warning"
    again = CsvPredictionWriter(str(output))
    with pytest.warns(UserWarning, match=rf"{output} exists and is replaced by these predictions"):
        again.on_predict_epoch_start(trainer, module)
    again.on_predict_epoch_end(trainer, module)
