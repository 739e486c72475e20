"""The record a fit writes for ablate: what it trained, how it ended, and that a resumed, already finished
fit keeps what the earlier attempt measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from ablate.run_record import ATTEMPT_ENV, RECORD_FILE, RunRecord
from lightning_modules.resilience.nan_guard import NanGuard


class Regression(LightningModule):
    """A one-layer model; ``nan_from_step`` makes its loss nan from that step on."""

    def __init__(self, nan_from_step: int | None = None) -> None:
        super().__init__()
        self.layer, self.nan_from_step = torch.nn.Linear(4, 1), nan_from_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if self.nan_from_step is not None and self.global_step >= self.nan_from_step:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        inputs, targets = torch.randn(16, 4, generator=generator), torch.randn(16, 1, generator=generator)
        return DataLoader(TensorDataset(inputs, targets), batch_size=4)


def fit(tmp_path: Path, model: LightningModule, max_epochs: int, ckpt_path: str | None = None) -> Trainer:
    trainer = Trainer(
        max_epochs=max_epochs,
        logger=CSVLogger(tmp_path, name="grid", version="run"),
        callbacks=[RunRecord(), NanGuard(check_every_n_steps=1)],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "grid" / "run" / RECORD_FILE).read_text())


def test_a_finished_fit_records_its_steps_epochs_loss_and_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ATTEMPT_ENV, "attempt-1")
    fit(tmp_path, Regression(), max_epochs=2)
    saved = record(tmp_path)
    assert saved["attempt"] == "attempt-1" and saved["status"] == "finished"
    assert (saved["steps"], saved["epochs"], saved["reached_budget"]) == (8, 2, True)
    assert saved["final_train_loss"] > 0 and "params" not in saved  # not a CoAtNet: no size

    monkeypatch.setenv(ATTEMPT_ENV, "attempt-2")  # resumed after its end: no batch trained, nothing lost
    last = next((tmp_path / "grid" / "run" / "checkpoints").glob("*.ckpt"))
    fit(tmp_path, Regression(), max_epochs=2, ckpt_path=str(last))
    resumed = record(tmp_path)
    assert resumed["attempt"] == "attempt-2" and resumed["status"] == "finished"
    assert resumed["steps"] == 8 and resumed["final_train_loss"] == pytest.approx(saved["final_train_loss"])


def test_a_fit_stopped_by_the_nan_guard_records_diverged(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not finite"):
        fit(tmp_path, Regression(nan_from_step=2), max_epochs=2)
    saved = record(tmp_path)
    assert saved["status"] == "diverged" and saved["reached_budget"] is False
    assert saved["error"].startswith("TrainingDiverged: training loss is not finite")
