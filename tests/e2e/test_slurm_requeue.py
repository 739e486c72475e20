"""``--config slurm.yaml``: SLURM's warning signal before the time limit saves ``last.ckpt``, requeues the job
once (a fake ``scontrol`` on PATH records its arguments), and the requeued run resumes from ``last``.

The environment is a one-task SLURM job, so Lightning detects ``SLURMEnvironment``: its own SIGUSR1
requeue would call ``scontrol`` a second time and leave an ``hpc_ckpt_*.ckpt`` behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TESTS_DIR, run_cli, subprocess_env
from lightning.pytorch import Callback
from step_marker import start_marked_fit, wait_for_step

from lightning_modules.resilience.interrupt import InterruptCheckpoint, signal_named
from lightning_modules.resilience.slurm_requeue import slurm_job_id

SLURM_JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


def fake_scontrol(folder: Path) -> Path:
    """A ``scontrol`` in ``folder`` that appends its arguments to ``folder/scontrol.log``; returns the log."""
    folder.mkdir()
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "scontrol.log"}\n')
    script.chmod(0o755)
    return folder / "scontrol.log"


@pytest.mark.slow
def test_sigusr1_before_the_time_limit_saves_requeues_once_and_the_requeued_job_resumes(tmp_path):
    logs, marker = tmp_path / "logs", tmp_path / "step.txt"
    calls = fake_scontrol(tmp_path / "bin")
    args = [
        "fit",
        "--config",
        "smoke.yaml",
        "--config",
        "slurm.yaml",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_progress_bar=false",
    ]
    env = subprocess_env(
        threads=1,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)]),
        PATH=f"{calls.parent}{os.pathsep}{os.environ['PATH']}",
        **SLURM_JOB,
    )
    proc = start_marked_fit(args, marker, tmp_path, env, delay=0.2)
    try:
        wait_for_step(proc, marker, step=2)
        proc.send_signal(signal.SIGUSR1)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGUSR1, output[-3000:]
    assert calls.read_text() == "requeue 4242\n", "rank 0 requeues the job exactly once"
    assert "requeued SLURM job 4242" in output, output[-3000:]
    last = logs / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    assert 2 <= torch.load(last, map_location="cpu", weights_only=True)["global_step"] < 4
    assert not list(tmp_path.rglob("hpc_ckpt*")), "Lightning's own requeue stayed off"

    resumed = run_cli(args, cwd=tmp_path, env=env)  # the requeued job: same command, `ckpt_path: last` from slurm.yaml
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    assert calls.read_text() == "requeue 4242\n", "a run that finishes does not requeue"


def test_the_requeued_id_of_an_array_task_names_the_task():
    assert slurm_job_id({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2"}) == "5_2"
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_id({}) is None


def test_requeue_signals_are_named_as_in_sbatch_or_python():
    assert signal_named("USR1") == signal_named("SIGUSR1") == signal.SIGUSR1
    with pytest.raises(ValueError, match="'SIGFOO' is not a signal name; use e.g. SIGUSR1"):
        signal_named("SIGFOO")


def test_uncatchable_requeue_signals_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="requeue_on: SIGKILL cannot be caught .* use SIGUSR1"):
        InterruptCheckpoint(requeue_on=["SIGKILL"])


class SignalAtFitStart(Callback):
    """Sends this process SIGUSR1 after ``setup``, while the fit starts up (before Lightning's signal handlers)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_sigusr1_while_the_fit_starts_stops_after_one_step_says_so_and_requeues_once(tmp_path):
    calls = fake_scontrol(tmp_path / "bin")
    env = subprocess_env(threads=1, PATH=f"{calls.parent}{os.pathsep}{os.environ['PATH']}", **SLURM_JOB)
    proc = run_cli(
        [
            "fit",
            "--config",
            "smoke.yaml",
            "--config",
            "slurm.yaml",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=4",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=test_slurm_requeue.SignalAtFitStart",
        ],
        cwd=tmp_path,
        env=env,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 128 + signal.SIGUSR1, output[-3000:]
    assert "SIGUSR1 received before training started: the run stops after its first step and requeues" in output
    assert "stopped after global step 1" in output and calls.read_text() == "requeue 4242\n", output[-3000:]
    assert not list(tmp_path.rglob("hpc_ckpt*")), "Lightning's own requeue stayed off"
