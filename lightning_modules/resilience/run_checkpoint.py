"""``ModelCheckpoint`` that also writes ``last.ckpt`` when training stops inside an epoch.

Lightning saves ``last`` only with a validation or epoch-end save, so a stop by ``max_steps``, ``max_time`` or a
callback setting ``should_stop`` lost the steps since the last one."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """The run's ``ModelCheckpoint`` (config key ``checkpoint:``: ``last.ckpt`` and the best ones) that also saves
    ``last.ckpt`` after the step at which training stops inside an epoch.

    The save happens at the step boundary, as ``every_n_train_steps`` saves do, so ``--ckpt_path last`` with a
    later limit trains the rest of that epoch instead of skipping it.
    """

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key, so checkpoints written with either class resume with their best score."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        max_steps_reached = 0 <= trainer.max_steps <= trainer.global_step
        stopping = trainer.should_stop or max_steps_reached
        unsaved = self._last_global_step_saved != trainer.global_step
        if self.save_last and stopping and unsaved and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# Lightning 2.6's per-step SIGTERM check under DDP: a broadcast from rank 0 and a host read of it.
