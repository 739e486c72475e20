"""The private Lightning names the project relies on still exist, so a Lightning upgrade that renames one
fails here, naming the module that uses it, instead of deep inside a run."""

from __future__ import annotations

import importlib
import inspect

import pytest
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

# (Lightning module, private name, the project module that uses it and why)
IMPORTED = [
    (
        "lightning.pytorch.callbacks.throughput_monitor",
        "_plugin_to_compute_dtype",
        "callbacks/throughput.py: the compute dtype behind the precision plugin, for MFU",
    ),
    (
        "lightning.fabric.utilities.cloud_io",
        "_is_local_file_protocol",
        "resilience/atomic_io.py: atomic rename only on local paths",
    ),
    ("lightning.fabric.utilities.types", "_PATH", "resilience/atomic_io.py: CheckpointIO's path type"),
]
METHODS = [
    (LightningCLI, "_instantiate_trainer", "cli.py: leave out the progress bar when another is configured"),
    (LightningCLI, "_parse_ckpt_path", "cli.py: keep the config's hyper-parameters over the checkpoint's"),
    (ModelCheckpoint, "_should_skip_saving_checkpoint", "resilience/run_checkpoint.py"),
    (ModelCheckpoint, "_save_last_checkpoint", "resilience/run_checkpoint.py: last.ckpt at a stop"),
    (ModelCheckpoint, "_monitor_candidates", "resilience/run_checkpoint.py"),
    (_TrainingEpochLoop, "_broadcast_sigterm_tensor", "resilience/interrupt.py: the per-step DDP check it replaces"),
    (
        _SignalConnector,
        "_has_already_handler",
        "resilience/interrupt.py: Lightning installs no SLURM requeue over a SIGUSR1 handler set in setup",
    ),
]


@pytest.mark.parametrize(("module", "name", "user"), IMPORTED)
def test_imported_private_names_exist(module, name, user):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone; used by {user}"


@pytest.mark.parametrize(("owner", "name", "user"), METHODS)
def test_private_methods_exist(owner, name, user):
    assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone; used by {user}"


def test_private_instance_attributes_exist():
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert hasattr(trainer._signal_connector, "received_sigterm"), "used by resilience/interrupt.py"
    assert hasattr(ModelCheckpoint(), "_last_global_step_saved"), "used by resilience/run_checkpoint.py"
    assert "_trainer" in vars(LightningModule()), "used by classifier.py: the trainer, or None outside a run"
    assert "self._trainer" in inspect.getsource(LightningModule.trainer.fget)


def test_private_names_of_loggers_parser_and_loops_exist(tmp_path):
    """The five the architecture review found unchecked, less the two no longer used (TensorBoardLogger's
    ``_default_hp_metric``: ``configs/defaults.yaml`` sets ``default_hp_metric``; the accelerator connector's
    cluster environment: ``InterruptCheckpoint`` claims SIGUSR1 first)."""
    parser = LightningArgumentParser()
    parser.add_class_arguments(Trainer, "trainer")
    action = parser._option_string_actions.get("--trainer.limit_val_batches")
    assert hasattr(action, "_typehint"), "used by cli_plumbing.py: batch limits that take counts"
    for logger in (TensorBoardLogger(tmp_path), CSVLogger(tmp_path)):
        assert "_version" in vars(logger), "used by resilience/resume_paths.py: continue a run's version folder"
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    assert isinstance(progress.ready, int), "used by datamodules (mid-epoch resume): batches already fetched"
