"""One ablation run as a ``cli.py fit`` subprocess in its own logger folder, resumable and prunable.

The run folder is ``<log_dir>/<grid>/<run name>/``, fixed by the grid point, so a rerun on any machine
with the same log folder finds the run's ``last.ckpt`` and ``--ckpt_path last`` resumes it (or starts
fresh when there is none). While the fit runs, its TensorBoard event files are read every few seconds
and each new epoch's ``val/acc1`` goes to ``on_epoch``; when that answers True, the fit is stopped with
SIGTERM, which makes cli.py save ``last.ckpt`` and exit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.metrics import epoch_accuracies

CLI_MODULE = "lightning_modules.cli"  # run with -m: works in a clone and from an installed wheel
FINISHED_MARKER = "ablate_finished.json"
WALL_TIME_FILE = "ablate_wall_time.json"
POLL_SECONDS = 5.0
TERMINATE_GRACE_SECONDS = 120.0
TENSORBOARD_LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"


@dataclass(frozen=True)
class RunPlan:
    name: str
    run_dir: Path
    argv: list[str]


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    stopped_early: bool
    wall_time_s: float


def cli_value(value: Any) -> str:
    """A value as cli.py's parser reads it from the command line (YAML/JSON syntax)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def plan_run(base: tuple[str, ...], settings: dict[str, Any], log_dir: Path, grid: str, name: str,
             extra_args: list[str]) -> RunPlan:
    """The ``cli.py fit`` command line of one run: its configs, its settings and its own logger folder."""
    argv = [sys.executable, "-m", CLI_MODULE, "fit"]
    for config in base:
        argv += ["--config", config]
    argv += [f"--{key}={cli_value(value)}" for key, value in settings.items()]
    argv += [
        f"--trainer.logger.class_path={TENSORBOARD_LOGGER}",
        f"--trainer.logger.init_args.save_dir={log_dir}",
        f"--trainer.logger.init_args.name={grid}",
        f"--trainer.logger.init_args.version={name}",
        "--trainer.logger.init_args.flush_secs=2",  # val/acc1 reaches the event file soon enough to prune on
        *extra_args,
        "--ckpt_path=last",
    ]
    return RunPlan(name, log_dir / grid / name, argv)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED_MARKER).is_file()


def wall_time_so_far(run_dir: Path) -> float:
    """Seconds spent in earlier attempts of this run (interrupted ones included)."""
    path = run_dir / WALL_TIME_FILE
    return float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0


def launch(plan: RunPlan, on_epoch: Callable[[int, float], bool], env: dict[str, str] | None = None) -> RunOutcome:
    """Run the fit; ``on_epoch(epoch, val_acc1)`` is called once per new epoch, True stops the run."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    earlier = wall_time_so_far(plan.run_dir)
    start = time.perf_counter()
    process = subprocess.Popen(plan.argv, env=env, start_new_session=True)
    reported: set[int] = set()
    stopped = False
    try:
        while not _exited_within(process, POLL_SECONDS):
            if not stopped and _report_new_epochs(plan.run_dir, reported, on_epoch):
                stopped = True
                process.send_signal(signal.SIGTERM)
        process.wait()
        _report_new_epochs(plan.run_dir, reported, on_epoch)
    finally:
        if process.poll() is None:  # this process was interrupted: let the fit save last.ckpt and stop
            process.send_signal(signal.SIGTERM)
            process.wait(TERMINATE_GRACE_SECONDS)
        seconds = earlier + time.perf_counter() - start
        (plan.run_dir / WALL_TIME_FILE).write_text(json.dumps({"seconds": seconds}))
    if process.returncode == 0 and not stopped:
        (plan.run_dir / FINISHED_MARKER).write_text(json.dumps({"wall_time_s": seconds}))
    return RunOutcome(process.returncode, stopped, seconds)


def _exited_within(process: subprocess.Popen, seconds: float) -> bool:
    """Wait up to ``seconds``; returns as soon as the fit exits, so no poll interval is added to its run time."""
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _report_new_epochs(run_dir: Path, reported: set[int], on_epoch: Callable[[int, float], bool]) -> bool:
    stop = False
    for epoch, accuracy in epoch_accuracies(run_dir).items():
        if epoch not in reported:
            reported.add(epoch)
            stop = on_epoch(epoch, accuracy) or stop
    return stop
