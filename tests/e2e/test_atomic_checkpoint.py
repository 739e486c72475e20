"""Checkpoint writes are atomic: a process SIGKILLed at any moment leaves a loadable ``last.ckpt``, and
training resumes.

The kill test runs one helper process that imports torch and Lightning once and then forks a
training child per round (a fresh interpreter per round would cost ~5 s of imports each). Each
child first loads ``last.ckpt`` (the check), then resumes training with a checkpoint after every
step; the helper SIGKILLs it after a seeded random delay. Checkpoints are large (~64 MB) so that
most of a child's time is spent writing them and kills land mid-write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

from coatnet.errors import CheckpointError
from lightning_modules.resilience.atomic_io import (
    AtomicCheckpointIO,
    atomic_torch_save,
    partial_path,
)

KILLS = 8
FINAL_STEPS = 5  # the finishing round trains this many steps past its resume point
KILLED_ROUND_STEPS = 1_000_000  # killed rounds never finish first, however fast the disk
PARAMS = 8_000_000  # 32 MB of weights + 32 MB of SGD momentum per checkpoint


def _train_child(folder: Path, log: Path, final: bool) -> int:
    """One training round in a forked child: verify ``last.ckpt``, resume, checkpoint every step."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.set_num_threads(1)
    last = folder / "last.ckpt"
    step = -1
    if last.exists():
        try:
            step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        except Exception as err:  # the failure this test exists to catch
            log.write_text(log.read_text() + f"corrupt {type(err).__name__}: {err}\n")
            return 3
    with log.open("a") as f:
        f.write(f"loaded {step}\n")
    max_steps = max(step, 0) + FINAL_STEPS if final else KILLED_ROUND_STEPS

    class Big(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(PARAMS))

        def training_step(self, batch, batch_idx):
            return (self.weight * batch[0].mean()).square().mean() + self.weight.mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(10_000)), batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=0, save_last=True)],
    )
    trainer.fit(Big(), data, ckpt_path=str(last) if last.exists() else None)
    with log.open("a") as f:
        f.write(f"finished {trainer.global_step}\n")
    return 0


def kill_rounds(folder: str, seed: int) -> None:
    """Helper-process entry: fork ``KILLS`` training children and SIGKILL each, then let one finish; print a
    JSON report."""
    import random
    import signal
    import time

    import lightning.pytorch  # noqa: F401  (imported once here, inherited by every fork)

    folder_path, rng = Path(folder), random.Random(seed)
    log = folder_path / "rounds.log"
    log.write_text("")
    report = {"killed_mid_write": 0, "exit_codes": []}
    for round_index in range(KILLS + 1):
        marks = log.read_text().count("\n")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _train_child(folder_path, log, final=round_index == KILLS)
            finally:
                os._exit(code)
        if round_index < KILLS:
            while log.read_text().count("\n") == marks and os.waitpid(pid, os.WNOHANG) == (0, 0):
                time.sleep(0.01)  # wait until the child has checked last.ckpt
            time.sleep(rng.uniform(0.3, 1.5))
            os.kill(pid, signal.SIGKILL)
            report["killed_mid_write"] += partial_path(folder_path / "last.ckpt").exists()
        report["exit_codes"].append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    report["log"] = log.read_text().splitlines()
    print(json.dumps(report))


@pytest.mark.slow
def test_sigkill_during_checkpointing_never_leaves_a_broken_last_ckpt(tmp_path):
    code = f"import test_atomic_checkpoint as t; t.kill_rounds({str(tmp_path)!r}, seed=1234)"
    env = subprocess_env(threads=1)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    log = report["log"]
    assert not [line for line in log if line.startswith("corrupt")], log
    loaded = [int(line.split()[1]) for line in log if line.startswith("loaded")]
    assert len(loaded) == KILLS + 1, log
    assert loaded == sorted(loaded) and loaded[-1] > 0, f"every resume starts at or after the previous one: {log}"
    assert sum(step >= 0 for step in loaded[1:]) >= KILLS // 2, f"too few kills after the first checkpoint: {log}"
    assert report["exit_codes"][:KILLS] == [-9] * KILLS and report["exit_codes"][-1] == 0, report
    assert log[-1] == f"finished {loaded[-1] + FINAL_STEPS}", log
    assert report["killed_mid_write"] >= 1, f"no kill landed during a write, the test proved nothing: {report}"
    assert (
        torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
        == loaded[-1] + FINAL_STEPS
    )


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # fails half-way through torch.save, as a real write error would


def test_failed_write_keeps_the_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, target)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": 2, "w": torch.ones(3), "bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_checkpoint_io_keeps_file_mode_and_reports_truncated_files(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "sub" / "x.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(1000.0)}, "pytorch-lightning_version": "2.6.0"}, target)
    assert io.load_checkpoint(target)["state_dict"]["w"][-1] == 999
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask, "same permissions as a plain open() would give"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="x.ckpt is not a readable PyTorch checkpoint"):
        io.load_checkpoint(target)
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_checkpoint(tmp_path / "missing.ckpt")
