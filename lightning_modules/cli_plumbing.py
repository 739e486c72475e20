"""How ``CoAtNetCLI`` gets LightningCLI and jsonargparse to do what a run needs; read ``cli.py`` for what it does.

Each function here works around one behaviour of Lightning or jsonargparse (named in its docstring) or runs one
step around instantiation that the CLI class calls in a single line: the parser that takes config names, batch
limits that stay counts, the checks and settings applied before anything is built, the callbacks a trainer can
take, and where ``--ckpt_path last`` points.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_modules.callbacks.progress import LoggedLossProgressBar
from lightning_modules.config_files import ConfigFileOrName
from lightning_modules.hparam_ranges import check_optimizer
from lightning_modules.resilience.last_of_config import last_checkpoint_of_config
from lightning_modules.resilience.resume_paths import continue_run_folder, resolve_ckpt_path
from lightning_modules.weights_preprocessing import apply_weights_preprocessing, weights_exist

BATCH_LIMITS = [f"trainer.limit_{stage}_batches" for stage in ("train", "val", "test", "predict")]
CONFIG_HELP = "A YAML config file, or a name in configs/: smoke.yaml, trainer/ddp.yaml (or just ddp.yaml)."


def parser_kwargs(default_config: Path, subcommands: Iterable[str], run: bool) -> dict[str, Any]:
    """``configs/defaults.yaml`` as the parsers' default config file. With subcommands the trainer's keys live in
    each subcommand's parser, not in the main one, so each gets it; without (``run=False``), the main one."""
    defaults = {"default_config_files": [str(default_config)]}
    return {name: defaults for name in subcommands} if run else defaults


def config_name_parser(parser_class: type[LightningArgumentParser], **kwargs: Any) -> LightningArgumentParser:
    """Lightning's parser (``LightningCLI.init_parser``), with ``--config`` taking bare names of files in
    ``configs/`` (``ConfigFileOrName``) and the Lightning version in the header of saved configs."""
    kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning.__version__}"])
    parser = parser_class(**kwargs)
    parser.add_argument("-c", "--config", action=ConfigFileOrName, help=CONFIG_HELP)
    return parser


def batch_limits_take_counts(parser: LightningArgumentParser) -> None:
    """Make ``--trainer.limit_val_batches=1`` one batch, as ``Trainer(limit_val_batches=1)`` is, not 1.0 (all).

    Lightning annotates them ``Optional[Union[int, float]]``, which Python's typing cache can return as the equal
    ``Union[float, int, None]`` created earlier; jsonargparse then tries float first and turns every 1 into 1.0.
    """
    for key in BATCH_LIMITS:
        parser._option_string_actions[f"--{key}"]._typehint = int | float | None


def prepare_instantiation(config: Any) -> str | None:
    """Before anything is built: refuse an optimizer lr <= 0 or weight decay < 0 (torch would only when building
    it), apply ``cpu_threads``, and give the data the eval preprocessing of ``model.init_from``'s weights.

    Returns the checkpoint the run will restore (``ckpt_path``, ``last`` resolved once one exists), or None. Such
    a checkpoint holds the weights, so ``init_from`` is not loaded: a fine-tuned run resumes, validates or tests
    from its ``config.yaml`` even after the original weights file has moved. The config keeps ``init_from``.
    """
    check_optimizer(config.model.get("optimizer"))
    if config.get("cpu_threads"):
        torch.set_num_threads(config.cpu_threads)
    ckpt_path = config.get("ckpt_path")
    checkpoint = last_checkpoint_of_config(config) if ckpt_path == "last" else ckpt_path
    init_from = config.model.get("init_from")
    if not init_from:
        return checkpoint
    if checkpoint:
        rank_zero_info(f"model.init_from is not loaded: the weights come from {checkpoint}")
        if not weights_exist(init_from):
            rank_zero_warn(f"{init_from} is gone: the preprocessing (mean, std, ...) is the config's as given")
            return checkpoint
    apply_weights_preprocessing(config.data, init_from)
    return checkpoint


def callbacks_the_trainer_takes(trainer_config: dict, callbacks: list[Callback]) -> list[Callback]:
    """Leave out ``progress_bar:`` when the bar is off or ``trainer.callbacks`` brings its own (Lightning allows
    one), and ``lr_monitor:`` when the logger is off (it refuses to run without one)."""
    own_bar = any(isinstance(c, ProgressBar) for c in trainer_config.get("callbacks") or [])
    if own_bar or trainer_config.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, LoggedLossProgressBar)]
    if trainer_config.get("logger") in (False, []):
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def resolve_last(subcommand_config: Any, trainer: Trainer, fresh_start: bool) -> str | None:
    """``--ckpt_path last`` also finds ``last.ckpt`` of earlier logger versions (Lightning looks only in the new
    one); the resolved path replaces it in ``subcommand_config``, which LightningCLI hands to the trainer."""
    subcommand_config["ckpt_path"] = resolve_ckpt_path(trainer, subcommand_config.get("ckpt_path"), fresh_start)
    return subcommand_config["ckpt_path"]


def resume_in_its_folder(subcommand_config: Any, trainer: Trainer) -> None:
    """Resolve ``--ckpt_path last`` for a fit; a resumed fit goes on in its checkpoint's version folder."""
    continue_run_folder(trainer, resolve_last(subcommand_config, trainer, fresh_start=True))
