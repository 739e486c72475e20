"""What one ablation run did, written by the fit itself as JSON in its run folder (``ablate_run.json``).

``python -m ablate`` adds :class:`RunRecord` to every fit it launches. The record says how the fit ended
(finished, diverged, or stopped by another error), the training it actually did (optimizer steps, epochs,
the mean train loss of its last epoch, whether it reached its budget) and the network's size. The table
reads this file, never a checkpoint: unpickling a file in a shared log folder could run whatever a stranger
put there. The attempt token (from ``ABLATE_ATTEMPT``) tells ablate that the record is this launch's and
not one left by an earlier attempt.

This module is imported inside ``cli.py fit``: it must not import optuna or matplotlib.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from coatnet import CoAtNet
from coatnet.summary import summarize
from lightning_modules.resilience.network_match import network_config
from lightning_modules.user_errors import TrainingDiverged

RECORD_FILE = "ablate_run.json"
ATTEMPT_ENV = "ABLATE_ATTEMPT"
CALLBACK_PATH = "ablate.run_record.RunRecord"


class RunRecord(Callback):
    """Writes ``<trainer.log_dir>/ablate_run.json`` when the fit starts, ends, or stops on an error.

    Nothing is written for a fit that fails before ``on_fit_start`` (bad settings, or another fit holding
    the run folder's lock), so a record of this attempt means the fit got as far as training.
    """

    def __init__(self) -> None:
        self._record: dict[str, Any] | None = None
        self._path: Path | None = None
        self._loss_sum: torch.Tensor | None = None  # on the loss's device: no host read per step
        self._loss_batches = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.log_dir is None or not trainer.is_global_zero:
            return
        self._path = Path(trainer.log_dir) / RECORD_FILE
        earlier = read_record(self._path.parent) or {}
        self._record = {
            "attempt": os.environ.get(ATTEMPT_ENV),
            "status": "training",
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "final_train_loss": earlier.get("final_train_loss"),  # kept if this attempt trains no batch
            **_network_size(pl_module),
        }
        self._write()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loss_sum, self._loss_batches = None, 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum = loss.detach().float() + (0 if self._loss_sum is None else self._loss_sum)
            self._loss_batches += 1

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, "finished")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A resumed fit whose budget was already reached skips the training loop, and ``on_train_end``."""
        if self._record is not None and self._record["status"] == "training":
            self._finish(trainer, "finished")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        status = "diverged" if isinstance(exception, TrainingDiverged) else "error"
        self._finish(trainer, status, f"{type(exception).__name__}: {str(exception).strip()[:300]}")

    def _finish(self, trainer: Trainer, status: str, error: str | None = None) -> None:
        if self._record is None:
            return
        steps, epochs = trainer.global_step, trainer.current_epoch
        reached = (trainer.max_steps != -1 and steps >= trainer.max_steps) or (
            trainer.max_epochs is not None and trainer.max_epochs != -1 and epochs >= trainer.max_epochs
        )
        self._record.update(status=status, steps=steps, epochs=epochs, reached_budget=reached)
        if self._loss_batches:
            self._record["final_train_loss"] = float(self._loss_sum) / self._loss_batches
        if error is not None:
            self._record["error"] = error
        self._write()

    def _write(self) -> None:
        assert self._path is not None and self._record is not None
        partial = self._path.with_name(f".{RECORD_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(self._record, indent=1))
        os.replace(partial, self._path)


def _network_size(pl_module: LightningModule) -> dict[str, int]:
    """Parameters and forward FLOPs (2 per multiply-add, one image) of a fresh copy of the run's network."""
    try:
        config = network_config(pl_module.hparams)
    except (KeyError, TypeError, ValueError):  # not an ImageClassifier of this project
        return {}
    model = CoAtNet(config)
    parts = summarize(model, config.img_size, config.in_chans)
    return {"params": sum(p.numel() for p in model.parameters()), "flops": 2 * sum(part.macs for part in parts)}


def read_json_object(path: Path, if_damaged: str) -> dict[str, Any] | None:
    """A JSON object ablate or its runs wrote, or None where there is none; a damaged one is skipped with a
    warning naming it and ``if_damaged`` (what happens instead)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        warn(f"{path} is damaged (not a JSON object); {if_damaged}")
        return None
    return data


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None where there is none or it is damaged (a warning names it)."""
    return read_json_object(run_dir / RECORD_FILE, "its run is shown without it")


def warn(message: str) -> None:
    print(f"ablate: warning: {message}", file=sys.stderr, flush=True)
