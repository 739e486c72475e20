"""The training command line: ``coatnet-lightning fit|validate|test|predict --config smoke.yaml``.

Installed, the ``coatnet-lightning`` console script runs :func:`console_main`; in a clone ``python cli.py`` (a shim
over this module) and ``python -m lightning_modules.cli`` do the same. The DataModule is picked by ``class_path``
in the YAML (``data:``); the model is always ``ImageClassifier`` (``model:`` holds its arguments). ``num_classes``
and ``image_size`` are read off the instantiated DataModule and passed to the model, so they are set in one place
only. ``configs/defaults.yaml`` is applied first; a ``--config``/``-c`` value that is not a file in the working
directory is looked up in the shipped configs (see ``lightning_modules.config_files``), so ``--config
coatnet0.yaml`` works from anywhere. ``model.model_overrides`` from several config files and items merge key by
key (it is a dataclass, see ``lightning_modules.model_overrides``).
"""

from __future__ import annotations

from typing import Any

from jsonargparse.typing import PositiveInt
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_modules import cli_plumbing as plumbing
from lightning_modules.callbacks.progress import LoggedLossProgressBar
from lightning_modules.callbacks.run_config import RunConfigSaver
from lightning_modules.callbacks.throughput import ThroughputLogger
from lightning_modules.classifier import ImageClassifier
from lightning_modules.config_files import CONFIG_DIR
from lightning_modules.pictures.callback import RunPictures
from lightning_modules.resilience.init_weights import weights_from_checkpoint
from lightning_modules.resilience.interrupt import InterruptCheckpoint
from lightning_modules.resilience.nan_guard import NanGuard
from lightning_modules.resilience.random_state import RandomState
from lightning_modules.resilience.run_checkpoint import RunCheckpoint
from lightning_modules.resilience.run_lock import RunLock
from lightning_modules.user_errors import ConciseArgumentParser, exit_readably

# The logger, checkpoint settings and checkpoint IO every run starts from; shown by --print_config.
DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"
# The always-present callbacks, each configured under its own top-level key; trainer.callbacks is left for optional
# ones such as EMA. Their settings come from configs/defaults.yaml.
RUN_CALLBACKS = {
    "checkpoint": RunCheckpoint,  # last.ckpt and the best on val/acc1; last.ckpt again on a stop inside an epoch
    "throughput": ThroughputLogger,  # train/images_per_sec and, on GPUs, train/mfu
    "pictures": RunPictures,  # TensorBoard images, per-class accuracy and HParams
    "run_lock": RunLock,  # one fit at a time per run folder
    "progress_bar": LoggedLossProgressBar,  # shows the loss without a per-step device read
    "nan_guard": NanGuard,  # stops on a NaN/inf loss before its weights are checkpointed
    "interrupt_checkpoint": InterruptCheckpoint,  # SIGTERM or a first Ctrl+C: a clean stop with last.ckpt
    "random_state": RandomState,  # random streams saved with checkpoints: a resumed run draws the same
    "lr_monitor": LearningRateMonitor,  # the learning rate of every parameter group, as lr/<group>
}


class CoAtNetCLI(LightningCLI):
    """LightningCLI with the DataModule -> model links, the ``RUN_CALLBACKS`` and the training defaults of this
    template: the logger (TensorBoard under ``logs/``), checkpoint settings and atomic checkpoint IO come from
    ``configs/defaults.yaml``; the resolved config is saved as ``config.yaml`` in the logger's version folder.
    How it bends LightningCLI and jsonargparse to this: ``lightning_modules.cli_plumbing``.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        run = kwargs.get("run", True)
        kwargs.setdefault("parser_kwargs", plumbing.parser_kwargs(DEFAULTS_FILE, self.subcommands(), run))
        kwargs.setdefault("parser_class", ConciseArgumentParser)
        super().__init__(ImageClassifier, LightningDataModule, *args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser, with ``--config`` taking bare names of files in ``configs/``."""
        return plumbing.config_name_parser(self.parser_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key, callback in RUN_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key)
        plumbing.batch_limits_take_counts(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.add_argument(
            "--cpu_threads",
            type=PositiveInt | None,
            default=None,
            help="torch intra-op threads for CPU runs (None: torch's default). Small models on a few shared "
            "cores run several times faster with 1 than with threads that wait on each other.",
        )

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given. Lightning would replace the model's arguments with those saved in
        ``--ckpt_path`` and silently drop a changed setting; ``ImageClassifier.on_load_checkpoint`` instead
        refuses a checkpoint of another network and names the training settings a resumed run changes."""

    def before_instantiate_classes(self) -> None:
        """Check the optimizer, apply ``cpu_threads`` and ``init_from``'s preprocessing; note the checkpoint
        to restore, whose weights replace ``init_from``'s (``plumbing.prepare_instantiation``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._checkpoint_to_restore = plumbing.prepare_instantiation(config)

    def instantiate_classes(self) -> None:
        with weights_from_checkpoint(bool(getattr(self, "_checkpoint_to_restore", None))):
            super().instantiate_classes()

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        return super()._instantiate_trainer(config, plumbing.callbacks_the_trainer_takes(config, callbacks))

    def before_fit(self) -> None:
        """A resumed fit goes on in its checkpoint's version folder."""
        plumbing.resume_in_its_folder(self.config_init[self.subcommand], self.trainer)

    def before_validate(self) -> None:
        plumbing.resolve_last(self.config_init[self.subcommand], self.trainer, fresh_start=False)

    before_test = before_predict = before_validate


def main() -> CoAtNetCLI:
    """Run the CLI on ``sys.argv``; return it for inspection."""
    return CoAtNetCLI()


def console_main() -> None:
    """The ``coatnet-lightning`` console script: user-fixable errors as one ``error: ...`` line and exit status 2
    (``COATNET_TRACEBACK=1`` for the traceback)."""
    exit_readably(main)


if __name__ == "__main__":
    console_main()
