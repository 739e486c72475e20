"""Data-parallel training on CPU (gloo): one node with 2 processes, and 2 "nodes" started by torchrun.

Each process runs ``cli.py fit`` with ``WeightFingerprint`` (below) added as a callback; it writes
a hash of its parameters per rank. After training every replica must hold identical weights,
and they must differ from the initial ones. The children import this file by name, so ``tests/``
goes on their PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from conftest import REPO_ROOT, free_port, run_cli, subprocess_env

pytestmark = pytest.mark.slow
TESTS_DIR = Path(__file__).resolve().parent


def parameter_hash(module: LightningModule) -> str:
    """SHA-256 over all parameters in name order (buffers such as BatchNorm statistics are per rank)."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class WeightFingerprint(Callback):
    """Writes ``rank<N>.json`` with the parameter hash at the start and end of fit, and one draw of
    each global random stream (torch, numpy, Python) as training starts."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.initial = ""
        self.draws: list[float] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial = parameter_hash(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draws = [torch.rand(()).item(), float(np.random.random()), random.random()]

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record = {
            "initial": self.initial,
            "final": parameter_hash(pl_module),
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "draws": self.draws,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _fit_args(out_dir: Path, logs: Path) -> list[str]:
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
        "--data.init_args.train_size=256",  # 2 batches of 64 per rank and epoch
        "--data.init_args.val_size=64",
        "--trainer.callbacks+=test_distributed.WeightFingerprint",
        f"--trainer.callbacks.out_dir={out_dir}",
    ]


def _check_replicas(out_dir: Path, world_size: int) -> None:
    records = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert all(r["world_size"] == world_size for r in records)
    assert all(r["global_step"] == 4 for r in records), records
    assert len({r["final"] for r in records}) == 1, "replicas diverged"
    assert records[0]["final"] != records[0]["initial"], "weights did not change"
    assert len({r["initial"] for r in records}) == 1, "replicas started from different weights"
    draws = [set(r["draws"]) for r in records]
    assert all(len(d) == 3 for d in draws) and not draws[0] & draws[1], "ranks share random streams"


def _env() -> dict[str, str]:
    return subprocess_env(threads=1, PYTHONPATH=f"{REPO_ROOT}:{TESTS_DIR}")


def test_ddp_two_processes_on_one_node_stay_in_sync(tmp_path):
    out_dir = tmp_path / "hashes"
    run_cli([*_fit_args(out_dir, tmp_path / "logs"), "--trainer.devices=2"], cwd=tmp_path, env=_env())
    _check_replicas(out_dir, world_size=2)
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
            *_fit_args(out_dir, tmp_path / "logs"),
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
    _check_replicas(out_dir, world_size=2)
