"""Data-parallel training on CPU (gloo): one node with 2 processes (on tar shards), and 2 "nodes"
started by torchrun (on synthetic data).

Each process runs ``cli.py fit`` with ``WeightFingerprint`` (below) added as a callback; it writes
a hash of its parameters per rank and the samples its loader drew per epoch. After training every
replica must hold identical weights, they must differ from the initial ones, and the ranks must
have read disjoint samples. The children import this file by name, so its folder goes on their
PYTHONPATH next to ``tests/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TESTS_DIR, free_port, run_cli, subprocess_env
from data_helpers import CIFAR10_CLASSES, write_image_folder
from lightning.pytorch import Callback, LightningModule, Trainer
from step_marker import start_marked_fit, wait_for_step

from datamodules.sources.shard_writer import write_shards
from lightning_modules.pictures.callback import RunPictures

pytestmark = pytest.mark.slow


def parameter_hash(module: LightningModule) -> str:
    """SHA-256 over all parameters in name order (buffers such as BatchNorm statistics are per rank)."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class WeightFingerprint(Callback):
    """Writes ``rank<N>.json`` with the parameter hash at the start and end of fit, one draw of
    each global random stream (torch, numpy, Python) as training starts, the training sampler's
    class and sample indices in every epoch, the number of ``torch.distributed.broadcast``
    calls during training (Lightning's per-step SIGTERM check makes one each step), and how many
    validation images the pictures' confusion matrix of the last epoch counted."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.initial = ""
        self.draws: list[float] = []
        self.sampler = ""
        self.epochs: list[list[int]] = []
        self.broadcasts = 0
        self._broadcast = torch.distributed.broadcast

    def _counted_broadcast(self, *args, **kwargs):
        self.broadcasts += 1
        return self._broadcast(*args, **kwargs)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial = parameter_hash(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draws = [torch.rand(()).item(), float(np.random.random()), random.random()]
        torch.distributed.broadcast = self._counted_broadcast

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.distributed.broadcast = self._broadcast

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sampler = trainer.train_dataloader.sampler  # Lightning has set this epoch on it
        self.sampler = type(sampler).__name__
        self.epochs.append([int(i) for i in sampler])

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pictures = next(c for c in trainer.callbacks if isinstance(c, RunPictures))
        record = {
            "confusion_total": int(pictures.confusion.compute().sum()),  # the epoch's result, cached
            "initial": self.initial,
            "final": parameter_hash(pl_module),
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "draws": self.draws,
            "sampler": self.sampler,
            "epochs": self.epochs,
            "broadcasts": self.broadcasts,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _fit_args(out_dir: Path, logs: Path, data: list[str]) -> list[str]:
    return [
        "fit",
        "--config",
        "smoke.yaml",
        "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={logs}",
        *data,
        "--trainer.callbacks+=test_distributed.WeightFingerprint",
        f"--trainer.callbacks.out_dir={out_dir}",
    ]


SYNTHETIC = ["--data.init_args.train_size=256", "--data.init_args.val_size=64"]  # 2 batches of 64 per rank and epoch


def _check_replicas(out_dir: Path, world_size: int, sampler: str, samples: int, val_samples: int) -> list[dict]:
    records = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert all(r["confusion_total"] == val_samples for r in records), "the confusion matrix sums over every rank"
    assert all(r["world_size"] == world_size for r in records)
    assert all(r["global_step"] == 4 for r in records), records
    assert len({r["final"] for r in records}) == 1, "replicas diverged"
    assert records[0]["final"] != records[0]["initial"], "weights did not change"
    assert len({r["initial"] for r in records}) == 1, "replicas started from different weights"
    draws = [set(r["draws"]) for r in records]
    assert all(len(d) == 3 for d in draws) and not draws[0] & draws[1], "ranks share random streams"
    assert all(r["sampler"] == sampler for r in records), [r["sampler"] for r in records]
    for epoch in range(2):
        seen = [set(r["epochs"][epoch]) for r in records]
        assert len(set.union(*seen)) == sum(map(len, seen)) == samples, "ranks must read disjoint samples"
    assert records[0]["epochs"][0] != records[0]["epochs"][1], "the order must change between epochs"
    assert all(r["broadcasts"] == 0 for r in records), "a collective and a host sync in every step"
    return records


def _env() -> dict[str, str]:
    return subprocess_env(
        threads=1, PYTHONPATH=os.pathsep.join(map(str, [REPO_ROOT, TESTS_DIR, Path(__file__).parent]))
    )


def test_ddp_two_processes_on_one_node_stay_in_sync_reading_whole_shards(tmp_path):
    folder = write_image_folder(tmp_path / "images", "train", CIFAR10_CLASSES, per_class=26, size=(32, 32))
    write_image_folder(folder, "val", CIFAR10_CLASSES, per_class=2, size=(32, 32))
    shards = tmp_path / "shards"
    write_shards(folder / "train", shards, "train", samples_per_shard=32, workers=1)  # 9 shards, the last of 4
    write_shards(folder / "val", shards, "val", samples_per_shard=32, workers=1)
    data = [
        "--data=datamodules.ImageFolderDataModule",
        f"--data.root={shards}",
        "--data.train_dir=train-*.tar",
        "--data.val_dir=val-*.tar",
        "--data.num_classes=10",
        "--data.image_size=32",
        "--data.preset=cifar",
        "--data.batch_size=64",
        "--data.num_workers=0",
    ]
    out_dir = tmp_path / "hashes"
    run_cli([*_fit_args(out_dir, tmp_path / "logs", data), "--trainer.devices=2"], cwd=tmp_path, env=_env())
    records = _check_replicas(out_dir, world_size=2, sampler="ShardOrderSampler", samples=260, val_samples=20)
    shard_of = np.arange(260) // 32
    for record in records:  # a contiguous run of the shard order: 128 samples span at most 6 of the 9 shards
        assert all(len(set(shard_of[epoch])) <= 6 for epoch in record["epochs"])
    assert (tmp_path / "logs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_two_nodes_under_torchrun_stay_in_sync(tmp_path):
    out_dir = tmp_path / "hashes"
    port = free_port()
    nodes = []
    for node_rank in range(2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node_rank}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            str(REPO_ROOT / "cli.py"),
            *_fit_args(out_dir, tmp_path / "logs", SYNTHETIC),
            "--trainer.devices=1",
            "--trainer.num_nodes=2",
        ]
        log = open(tmp_path / f"node{node_rank}.log", "w")
        nodes.append((subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=240) for proc, _ in nodes]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = "\n".join((tmp_path / f"node{r}.log").read_text()[-3000:] for r in range(2))
    assert codes == [0, 0], logs
    _check_replicas(out_dir, world_size=2, sampler="EpochShuffleSampler", samples=256, val_samples=64)


@pytest.mark.slow
def test_sigterm_under_ddp_saves_last_checkpoint_and_exits(tmp_path):
    # Lightning's own SIGTERM handler broadcasts from inside the signal handler, which deadlocks DDP ranks
    # that are in another collective; the run then never exits and SLURM has to SIGKILL it.
    logs, marker = tmp_path / "logs", tmp_path / "step.txt"
    args = [
        "fit",
        "--config",
        "smoke.yaml",
        "--config",
        "ddp.yaml",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    env = subprocess_env(
        threads=1, MASTER_PORT=str(free_port()), PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
    )
    # a short step delay: the signal lands inside a step, mid-collective
    proc = start_marked_fit(args, marker, tmp_path, env, delay=0.01, start_new_session=True)
    try:
        wait_for_step(proc, marker, step=2)
        os.killpg(proc.pid, signal.SIGTERM)  # every rank, as SLURM signals every task
        output, _ = proc.communicate(timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    last = logs / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    assert "SIGTERM received: stopped after global step" in output and last.is_file(), output[-3000:]
