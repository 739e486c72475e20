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

from typing import Any, Optional

import lightning
import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_modules.callbacks.progress import LoggedLossProgressBar
from lightning_modules.callbacks.run_config import RunConfigSaver
from lightning_modules.callbacks.throughput import ThroughputLogger
from lightning_modules.classifier import ImageClassifier
from lightning_modules.config_files import CONFIG_DIR, ConfigFileOrName
from lightning_modules.hparam_ranges import check_optimizer
from lightning_modules.pictures.callback import RunPictures
from lightning_modules.resilience.init_weights import weights_from_checkpoint
from lightning_modules.resilience.interrupt import InterruptCheckpoint
from lightning_modules.resilience.last_of_config import last_checkpoint_of_config
from lightning_modules.resilience.nan_guard import NanGuard
from lightning_modules.resilience.random_state import RandomState
from lightning_modules.resilience.resume_paths import (
    continue_run_folder,
    resolve_ckpt_path,
)
from lightning_modules.resilience.run_checkpoint import RunCheckpoint
from lightning_modules.resilience.run_lock import RunLock
from lightning_modules.user_errors import ConciseArgumentParser, exit_readably
from lightning_modules.weights_preprocessing import apply_weights_preprocessing, weights_exist

# The logger, checkpoint settings and checkpoint IO every run starts from; shown by --print_config.
DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"
BATCH_LIMITS = [f"trainer.limit_{stage}_batches" for stage in ("train", "val", "test", "predict")]


def batch_limits_take_counts(parser: LightningArgumentParser) -> None:
    """Make ``--trainer.limit_val_batches=1`` one batch, as ``Trainer(limit_val_batches=1)`` is, not 1.0 (all).

    Lightning annotates them ``Optional[Union[int, float]]``, which Python's typing cache can return as the equal
    ``Union[float, int, None]`` created earlier; jsonargparse then tries float first and turns every 1 into 1.0.
    """
    for key in BATCH_LIMITS:
        parser._option_string_actions[f"--{key}"]._typehint = int | float | None


class CoAtNetCLI(LightningCLI):
    """LightningCLI with the DataModule -> model links and the training defaults of this template.

    Always-present callbacks get their own top-level config keys: ``checkpoint:`` (ModelCheckpoint:
    ``last.ckpt`` plus the best on ``val/acc1``, in the logger's version folder, and ``last.ckpt`` again when
    training stops inside an epoch),
    ``throughput:`` (``train/images_per_sec`` and, on GPUs, ``train/mfu``), ``pictures:``
    (TensorBoard images, per-class accuracy and HParams; see ``lightning_modules.pictures.callback``) and
    ``progress_bar:`` (shows the loss without a per-step device read), ``lr_monitor:`` (the learning rate of
    every parameter group, as ``lr/<group>``). ``trainer.callbacks`` is
    left for optional ones such as EMA. Their settings, the logger (TensorBoard under ``logs/``) and the
    atomic checkpoint IO come from ``configs/defaults.yaml``; the resolved config is saved as ``config.yaml``
    in the logger's version folder.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        defaults = {"default_config_files": [str(DEFAULTS_FILE)]}
        # With subcommands the trainer's keys live in each subcommand's parser, not in the main one.
        per_parser = {name: defaults for name in self.subcommands()} if kwargs.get("run", True) else defaults
        kwargs.setdefault("parser_kwargs", per_parser)
        kwargs.setdefault("parser_class", ConciseArgumentParser)
        super().__init__(ImageClassifier, LightningDataModule, *args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser, with ``--config`` taking bare names of files in ``configs/``."""
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning.__version__}"])
        parser = self.parser_class(**kwargs)
        help_text = "A YAML config file, or a name in configs/: smoke.yaml, trainer/ddp.yaml (or just ddp.yaml)."
        parser.add_argument("-c", "--config", action=ConfigFileOrName, help=help_text)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ThroughputLogger, "throughput")
        parser.add_lightning_class_args(RunPictures, "pictures")
        parser.add_lightning_class_args(RunLock, "run_lock")
        parser.add_lightning_class_args(LoggedLossProgressBar, "progress_bar")
        parser.add_lightning_class_args(NanGuard, "nan_guard")
        parser.add_lightning_class_args(InterruptCheckpoint, "interrupt_checkpoint")
        parser.add_lightning_class_args(RandomState, "random_state")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        batch_limits_take_counts(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.add_argument(
            "--cpu_threads",
            type=Optional[PositiveInt],
            default=None,
            help="torch intra-op threads for CPU runs (None: torch's default). Small models on a few shared "
            "cores run several times faster with 1 than with threads that wait on each other.",
        )

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given. Lightning would replace the model's arguments with those saved in
        ``--ckpt_path`` and silently drop a changed setting; ``ImageClassifier.on_load_checkpoint`` instead
        refuses a checkpoint of another network and names the training settings a resumed run changes."""

    def before_instantiate_classes(self) -> None:
        """Refuse an optimizer lr <= 0 or weight decay < 0 (torch would only when building it), apply
        ``cpu_threads``; weights given by ``model.init_from`` bring their eval preprocessing.

        When ``ckpt_path`` names a checkpoint (``last`` included, once one exists), that checkpoint holds the
        weights, so ``init_from`` is not loaded: a fine-tuned run resumes, validates or tests from its
        ``config.yaml`` even after the original weights file has moved. The config keeps ``init_from``.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_optimizer(config.model.get("optimizer"))
        if config.get("cpu_threads"):
            torch.set_num_threads(config.cpu_threads)
        ckpt_path = config.get("ckpt_path")
        self._checkpoint_to_restore = last_checkpoint_of_config(config) if ckpt_path == "last" else ckpt_path
        init_from = config.model.get("init_from")
        if not init_from:
            return
        if self._checkpoint_to_restore:
            rank_zero_info(f"model.init_from is not loaded: the weights come from {self._checkpoint_to_restore}")
            if not weights_exist(init_from):
                rank_zero_warn(f"{init_from} is gone: the preprocessing (mean, std, ...) is the config's as given")
                return
        apply_weights_preprocessing(config.data, init_from)

    def instantiate_classes(self) -> None:
        with weights_from_checkpoint(bool(getattr(self, "_checkpoint_to_restore", None))):
            super().instantiate_classes()

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        """Leave out ``progress_bar:`` when the bar is off or ``trainer.callbacks`` brings its own (Lightning allows
        one), and ``lr_monitor:`` when the logger is off (it refuses to run without one)."""
        own_bar = any(isinstance(c, ProgressBar) for c in config.get("callbacks") or [])
        if own_bar or config.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LoggedLossProgressBar)]
        if config.get("logger") in (False, []):
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        return super()._instantiate_trainer(config, callbacks)

    def _resolve_last(self, fresh_start: bool) -> str | None:
        """``--ckpt_path last`` also finds ``last.ckpt`` of earlier logger versions (Lightning looks only in the
        new one)."""
        config = self.config_init[self.subcommand]
        config["ckpt_path"] = resolve_ckpt_path(self.trainer, config.get("ckpt_path"), fresh_start)
        return config["ckpt_path"]

    def before_fit(self) -> None:
        """A resumed fit goes on in its checkpoint's version folder."""
        continue_run_folder(self.trainer, self._resolve_last(fresh_start=True))

    def before_validate(self) -> None:
        self._resolve_last(fresh_start=False)

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
