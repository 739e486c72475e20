"""Two fits in one run folder: the second refuses while the first lives, and a SIGKILLed holder leaves no stale lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger

from lightning_modules.resilience.run_lock import RunFolderInUse, RunLock, lock_run_folder

HOLDER = (
    "import sys; from pathlib import Path; from lightning_modules.resilience.run_lock import lock_run_folder; "
    "lock_run_folder(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()"
)


class Line(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_into(save_dir) -> Trainer:
    """A one-step fit whose logger writes into ``save_dir/run/version_0``, as a resumed run does."""
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=CSVLogger(save_dir, name="run", version=0),
        callbacks=[RunLock()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Line(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4)), batch_size=2))
    return trainer


def test_a_second_fit_into_a_locked_run_folder_refuses_until_the_holder_is_killed(tmp_path):
    folder = tmp_path / "run" / "version_0"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunFolderInUse, match=rf"fit.lock: another fit \(pid {holder.pid}\) is writing into"):
            fit_into(tmp_path)
        holder.kill()  # SIGKILL: no exit handler runs, the kernel drops the lock
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert fit_into(tmp_path).global_step == 1
    os.close(lock_run_folder(folder))  # the finished fit released the lock


def test_loggers_without_a_run_folder_lock_the_folder_of_their_run_and_resume_from_last(tmp_path, monkeypatch):
    """MLflow (as W&B) reports its store, shared by all its runs, as ``trainer.log_dir``: locking that refused every
    second run. The run's own checkpoint folder is locked instead, and ``--ckpt_path last`` finds its last.ckpt."""
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    from lightning_modules.resilience.resume_paths import resolve_ckpt_path
    from lightning_modules.resilience.run_checkpoint import RunCheckpoint

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = (tmp_path / "mlruns").as_uri()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4)), batch_size=2)

    def trainer() -> Trainer:
        return Trainer(
            accelerator="cpu",
            max_steps=1,
            logger=MLFlowLogger("lock", tracking_uri=store),
            callbacks=[RunLock(), RunCheckpoint(save_last=True)],
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )

    first = trainer()
    holder = RunLock()
    holder.setup(first, None, "fit")  # a fit of the first run, still going
    try:
        trainer().fit(Line(), loader)  # another run of the same store
    finally:
        holder.teardown(first, None, "fit")
    last = list(tmp_path.rglob("last.ckpt"))
    assert len(last) == 1 and (last[0].parent.parent / "fit.lock").is_file(), last
    resumed = trainer()
    assert resolve_ckpt_path(resumed, "last", fresh_start=True) == str(last[0])
    # known before anything is built too (so a resumed fine-tuning run does not load init_from): the experiment id
    # that names the folder is looked up by the experiment's name
    from jsonargparse import Namespace

    from lightning_modules.resilience.last_of_config import last_checkpoint_of_config

    def config(**init_args: str) -> Namespace:
        logger = Namespace(class_path="lightning.pytorch.loggers.MLFlowLogger", init_args=Namespace(**init_args))
        return Namespace(trainer=Namespace(logger=logger))

    assert last_checkpoint_of_config(config(experiment_name="lock", tracking_uri=store)) == str(last[0])
    assert last_checkpoint_of_config(config(experiment_name="other", tracking_uri=store)) is None
    assert last_checkpoint_of_config(config(experiment_name="lock", tracking_uri="http://127.0.0.1:5000")) is None


def test_last_checkpoint_of_a_wandb_config_is_looked_up_under_its_project(tmp_path):
    """Known before the model is built, so a resumed fine-tuning run does not load ``init_from``; W&B's ``name`` is
    the run's display name, its checkpoints go under the project."""
    from jsonargparse import Namespace

    from lightning_modules.resilience.last_of_config import last_checkpoint_of_config

    last = tmp_path / "coatnet" / "abc123" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 1}, last)
    logger = Namespace(
        class_path="lightning.pytorch.loggers.WandbLogger",
        init_args=Namespace(save_dir=str(tmp_path), project="coatnet", name="first try"),
    )
    assert last_checkpoint_of_config(Namespace(trainer=Namespace(logger=logger))) == str(last)


class RemoteOnlyLogger(Logger):
    """A logger that keeps nothing on this machine (an MLflow or W&B server): no save_dir, no log_dir."""

    name, version, save_dir, log_dir = "remote", "run-7", None, None

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_a_logger_without_any_local_folder_still_gets_its_checkpoint_folder_locked(tmp_path):
    from lightning_modules.resilience.run_checkpoint import RunCheckpoint

    holder = lock_run_folder(tmp_path / "remote" / "run-7")  # another fit of the same run
    try:
        trainer = Trainer(
            accelerator="cpu",
            max_steps=1,
            logger=RemoteOnlyLogger(),
            default_root_dir=tmp_path,
            callbacks=[RunLock(), RunCheckpoint(save_last=True)],
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4)), batch_size=2)
        with pytest.raises(RunFolderInUse, match="remote/run-7"):
            trainer.fit(Line(), loader)
    finally:
        os.close(holder)
    trainer.fit(Line(), loader)
    assert (tmp_path / "remote" / "run-7" / "checkpoints" / "last.ckpt").is_file(), "the folder that was locked"
