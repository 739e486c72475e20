"""Where a run's resolved config is saved: next to its checkpoints, without the ``ckpt_path`` that resumed it."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the logger's version folder, next to the run's checkpoints.

    Without a logger Lightning would write it to the working directory, over any ``config.yaml`` there, so
    then nothing is saved. ``ckpt_path`` is left out, so ``fit --config`` on the file repeats the run instead
    of resuming it.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.loggers:
            return
        if self.config.get("ckpt_path") is not None:  # a subcommand's config (run=False configs have no such key)
            self.config = self.config.clone()
            self.config.ckpt_path = None
        super().setup(trainer, pl_module, stage)
