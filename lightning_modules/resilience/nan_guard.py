"""Stop on a NaN/inf loss before a checkpoint of the damaged weights is written, so the newest one on disk
is the last good one."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_modules.hparam_ranges import PositiveInt, check_ranges
from lightning_modules.user_errors import TrainingDiverged


def _loss(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


class NanGuard(Callback):
    """Config key ``nan_guard:``. Raises :class:`TrainingDiverged` naming the first global step whose training loss
    was not finite.

    Reading the loss on the host every step would make the CPU wait for the GPU each step and lose
    the overlap of Python work with device work. So the check stays on the device (a flag and the
    first bad step), and the host reads it every ``check_every_n_steps`` steps, at the end of every
    epoch and before every checkpoint is written: weights damaged by a NaN are never saved, and
    training stops at most ``check_every_n_steps`` steps after the first bad loss. With DDP every
    rank checks its own loss; the gradients are all-reduced, so a NaN on one rank poisons all of
    them and they stop together.

    The process then exits with status 3 (``user_errors.DIVERGED_EXIT``), which tells a diverged run from a
    refused setting (2), so ``python -m ablate`` can record it as a result.
    """

    def __init__(self, check_every_n_steps: PositiveInt = 20) -> None:
        check_ranges(NanGuard.__init__, locals())  # the CLI's parser checks it too (nan_guard.check_every_n_steps)
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None  # -1 while every loss was finite
        self._step = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step  # this batch's loss is logged under it

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _loss(outputs)
        if loss is None:
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()).all() & (self._first_bad < 0)
        self._first_bad = torch.where(bad, self._step, self._first_bad)
        if (self._step + 1) % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Before validation draws pictures of (and logs metrics from) weights a NaN may have damaged."""
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.check(trainer)

    def check(self, trainer: Trainer) -> None:
        """Raise if any loss since the start was NaN/inf (one device-to-host copy)."""
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step < 0:
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        raise TrainingDiverged(
            f"training loss is not finite (nan or inf) at global step {step}; stopped before "
            f"saving these weights. Last good checkpoint: {last}. Resume from it with a lower learning rate, more "
            "warm-up, gradient clipping (--trainer.gradient_clip_val 1.0) or fp32/bf16 instead of fp16."
        )
