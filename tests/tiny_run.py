"""One short smoke fit through ``cli.py``, shared by the pictures and predict tests (run once per session)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from conftest import run_cli

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.num_sanity_val_steps=0",
]


@functools.cache
def tiny_fit() -> Path:
    """Version folder (event file, ``config.yaml``, ``checkpoints/last.ckpt``) of a 3-step smoke fit."""
    workdir = Path(tempfile.mkdtemp(prefix="tiny_fit_"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    run_cli(
        ["fit", "--config", "smoke.yaml", f"--trainer.logger.init_args.save_dir={workdir / 'tb'}", *SHORT, *QUIET],
        cwd=workdir,
    )
    return workdir / "tb" / "smoke" / "version_0"
