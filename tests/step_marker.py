"""A callback for subprocess tests: reports the global step in a file and slows each step.

A test that must signal a training process mid-run polls this file instead of parsing the
progress bar, whose output timing depends on buffering and machine load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class StepMarker(Callback):
    def __init__(self, path: str, delay: float = 0.5) -> None:
        self.path = Path(path)
        self.delay = delay

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_rank == 0:  # one writer: DDP ranks would race on the same file
            partial = self.path.with_suffix(".partial")
            partial.write_text(str(trainer.global_step))
            os.replace(partial, self.path)
        time.sleep(self.delay)  # leaves the test time to send its signal before the epoch ends


def wait_for_step(proc: subprocess.Popen, marker: Path, step: int, timeout: float = 240) -> None:
    """Block until the process behind ``marker`` has trained ``step`` steps; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if marker.exists() and int(marker.read_text() or 0) >= step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before {step} steps were seen:\n" + proc.stdout.read()[-3000:]


def start_marked_fit(
    args: list[str], marker: Path, cwd: Path, env: dict[str, str], delay: float | None = None, **popen
) -> subprocess.Popen:
    """``cli.py ARGS`` in the background with a ``StepMarker`` writing to ``marker`` (``delay`` seconds per step, the
    callback's default if None); its stdout and stderr together in ``proc.stdout``. ``env`` must put ``tests/`` on
    PYTHONPATH, where this module lives."""
    marked = ["--trainer.callbacks+=step_marker.StepMarker", f"--trainer.callbacks.path={marker}"]
    if delay is not None:
        marked.append(f"--trainer.callbacks.delay={delay}")
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    return subprocess.Popen(
        [sys.executable, str(cli), *args, *marked],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
