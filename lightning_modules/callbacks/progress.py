"""A progress bar that shows the training loss without making the CPU wait for the GPU every step.

A metric logged with ``prog_bar=True`` on every step is turned into a Python number after every
step (Lightning converts progress-bar metrics as soon as a step ends, whatever the bar's refresh
rate, and even with the bar off). That read waits until the GPU has finished the step, so the CPU
can no longer queue the next step's kernels ahead of it. This bar reads ``train/loss`` only on the
steps where the loggers write (every ``trainer.log_every_n_steps``), which read it anyway.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_modules.steps import loggers_write_after


class LoggedLossProgressBar(TQDMProgressBar):
    """TQDM bar whose ``train/loss`` is the value of the last logging step.

    Args:
        refresh_rate: redraw the bar every this many batches (redrawing reads nothing from the device).
        leave: keep each epoch's bar on screen when the epoch ends.
        metric: the logged training metric to show.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, metric: str = "train/loss") -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.metric = metric
        self._shown: dict[str, float] = {}
        self._read_at = -1

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step already counts this batch's optimizer step; with accumulated gradients several
        # batches end at the same step, and only the first reads.
        step = trainer.global_step
        if loggers_write_after(trainer, step) and step != self._read_at:
            value = trainer.callback_metrics.get(self.metric)
            if value is not None:
                self._shown, self._read_at = {self.metric: float(value)}, step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._shown, self._read_at = {}, -1
        super().on_train_start(trainer, pl_module)

    def get_metrics(
        self, trainer: Trainer, pl_module: LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        return {**super().get_metrics(trainer, pl_module), **self._shown}
