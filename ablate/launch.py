"""One ablation run as a ``cli.py fit`` subprocess in its own logger folder, resumable and prunable.

The run folder is ``<log_dir>/<grid>/<run name>/``, fixed by the grid point, so a rerun on any machine
with the same log folder finds the run's ``last.ckpt`` and ``--ckpt_path last`` resumes it (or starts
fresh when there is none). While the fit runs, its TensorBoard event files are read every few seconds
and each new epoch's ``val/acc1`` goes to ``on_epoch``; when that answers True, the fit is stopped with
SIGTERM, which makes cli.py save ``last.ckpt`` and exit.

Every run gets the budget of its grid file and nothing else: a ``trainer.max_time`` of the base config is
dropped unless the grid (or the extra arguments) sets one, since a wall-clock limit makes the runs' lengths
depend on how busy the machine was. The fit writes its own record (``ablate.run_record``); this side
writes the wall time and the machine's load while the run trained (``ablate_wall_time.json``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.metrics import epoch_accuracies
from ablate.run_record import ATTEMPT_ENV, CALLBACK_PATH, read_json_object
from lightning_modules.resilience.run_lock import LOCK_NAME

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
    attempt: str = ""  # the token the fit's record carries when this launch got as far as training


def cli_value(value: Any) -> str:
    """A value as cli.py's parser reads it from the command line (YAML/JSON syntax)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def plan_run(
    base: tuple[str, ...], settings: dict[str, Any], log_dir: Path, grid: str, name: str, extra_args: list[str]
) -> RunPlan:
    """The ``cli.py fit`` command line of one run: its configs, its settings and its own logger folder."""
    run_dir = log_dir / grid / name
    if run_dir.resolve().parent.parent != log_dir.resolve():
        raise ValueError(f"run folder {run_dir} would be outside {log_dir}")  # grid_file refuses such names
    argv = [sys.executable, "-m", CLI_MODULE, "fit"]
    for config in base:
        argv += ["--config", config]
    if "trainer.max_time" not in settings:
        argv.append("--trainer.max_time=null")  # no wall-clock limit inherited from the base config
    argv += [f"--{key}={cli_value(value)}" for key, value in settings.items()]
    argv += [
        f"--trainer.callbacks+={CALLBACK_PATH}",
        f"--trainer.logger.class_path={TENSORBOARD_LOGGER}",
        f"--trainer.logger.init_args.save_dir={log_dir}",
        f"--trainer.logger.init_args.name={grid}",
        f"--trainer.logger.init_args.version={name}",
        "--trainer.logger.init_args.flush_secs=2",  # val/acc1 reaches the event file soon enough to prune on
        *extra_args,
        "--ckpt_path=last",
    ]
    return RunPlan(name, run_dir, argv)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED_MARKER).is_file()


def finished_outcome(run_dir: Path) -> str:
    """How a finished run ended: ``complete`` or ``diverged`` (a diverged run is a result, not trained again)."""
    marker = _read_json(run_dir / FINISHED_MARKER)
    return str(marker.get("outcome", "complete"))


def mark_finished(run_dir: Path, outcome: str) -> None:
    (run_dir / FINISHED_MARKER).write_text(json.dumps({"outcome": outcome}))


def launch_record(run_dir: Path) -> dict[str, float]:
    """Wall time of every attempt of this run (interrupted ones included), and the mean 1-minute load average
    while it trained, with the machine's CPU count: {} before the first attempt."""
    return _read_json(run_dir / WALL_TIME_FILE)


def wall_time_so_far(run_dir: Path) -> float:
    return float(launch_record(run_dir).get("seconds", 0.0))


def lock_holder(run_dir: Path) -> str | None:
    """The PID written in the run folder's ``fit.lock`` while a live fit holds it, else None.

    The same non-blocking ``flock`` the fit takes: held means a fit is writing into the folder right now
    (another ablate's, or one left running by an ablate that was killed)."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file yet (or not a file: the fit itself says what is wrong)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # also releases the probe's own shared lock
    return None


def launch(plan: RunPlan, on_epoch: Callable[[int, float], bool], env: dict[str, str] | None = None) -> RunOutcome:
    """Run the fit; ``on_epoch(epoch, val_acc1)`` is called once per new epoch, True stops the run."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    before = launch_record(plan.run_dir)
    earlier = float(before.get("seconds", 0.0))
    attempt = uuid.uuid4().hex
    start = time.perf_counter()
    process = subprocess.Popen(plan.argv, env={**(env or os.environ), ATTEMPT_ENV: attempt}, start_new_session=True)
    reported: set[int] = set()
    loads = [os.getloadavg()[0]]
    stopped = False
    try:
        while not _exited_within(process, POLL_SECONDS):
            loads.append(os.getloadavg()[0])
            if not stopped and _report_new_epochs(plan.run_dir, reported, on_epoch):
                stopped = True
                process.send_signal(signal.SIGTERM)
        process.wait()
        _report_new_epochs(plan.run_dir, reported, on_epoch)
    finally:
        if process.poll() is None:  # this process was interrupted: let the fit save last.ckpt and stop
            process.send_signal(signal.SIGTERM)
            process.wait(TERMINATE_GRACE_SECONDS)
        now = time.perf_counter() - start
        seconds = earlier + now
        load = (float(before.get("load_avg_1min", 0.0)) * earlier + sum(loads) / len(loads) * now) / max(seconds, 1e-9)
        record = {"seconds": seconds, "load_avg_1min": round(load, 2), "cpu_count": os.cpu_count()}
        (plan.run_dir / WALL_TIME_FILE).write_text(json.dumps(record))
    return RunOutcome(process.returncode, stopped, seconds, attempt)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object this package wrote; {} where there is none, and a warning naming a damaged one."""
    return read_json_object(path, "it is ignored") or {}


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
