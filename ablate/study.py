"""The Optuna study behind an ablation: shared storage, the sampler, and one trial = one ``cli.py fit``.

Optuna hands out the work, so several machines pointed at the same storage split a grid between them:
GridSampler gives each trial a grid point no one has finished or started (a point whose trial died is
handed out again once the rest are taken), TPE proposes values inside the file's ``search:`` ranges
and MedianPruner stops TPE trials whose ``val/acc1`` after an epoch is below the median of earlier
trials at that epoch.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from ablate.grid_file import GridFileError, GridSpec, SearchRange
from ablate.launch import RunOutcome, RunPlan, is_finished, launch, plan_run
from ablate.metrics import best_accuracy

USER_ERROR_EXIT = 2
HEARTBEAT_SECONDS = 60  # RDB storages only: a trial without a beat for GRACE_SECONDS is failed by any worker
GRACE_SECONDS = 600
SAMPLERS = ("grid", "tpe")
Launcher = Callable[[RunPlan, Callable[[int, float], bool]], RunOutcome]


class RunFailed(RuntimeError):
    """A fit crashed or was killed; the study goes on with the other runs."""


class RunConfigError(RuntimeError):
    """cli.py refused the run's settings (exit 2): every other run would be refused too."""


class _RunErrorsWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; for a failed or refused run the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (RunFailed, RunConfigError)):
            record.exc_info = None
        return True


def quiet_run_errors() -> None:
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(_RunErrorsWithoutTraceback())


def open_storage(storage: str) -> BaseStorage:
    """An RDB URL (``sqlite:///...``, ``postgresql://...``) or else a journal file path, which machines
    sharing a file system can all append to."""
    if "://" in storage:
        return RDBStorage(storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def make_sampler(spec: GridSpec, sampler: str, seed: int) -> optuna.samplers.BaseSampler:
    if sampler == "grid":
        if not spec.grid_space():
            raise GridFileError(f"{spec.path} has no variants: or axes: for --sampler grid; add some, or use --sampler tpe")
        return optuna.samplers.GridSampler(spec.grid_space(), seed=seed)
    if not spec.search:
        raise GridFileError(f"{spec.path} has no search: ranges for --sampler tpe; add e.g. model.optimizer.init_args.lr: "
                         "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, len(spec.search) * 2)))


def make_pruner(sampler: str, startup_trials: int) -> optuna.pruners.BasePruner:
    """Grids keep every run to the end (an ablation compares all of them); searches prune."""
    if sampler == "grid":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)


def suggest(trial: Trial, spec: GridSpec) -> dict[str, Any]:
    """The trial's values: the grid (variants and axes) as categoricals, then the search ranges."""
    params = {key: trial.suggest_categorical(key, values) for key, values in spec.grid_space().items()}
    for dimension in spec.search:
        params[dimension.key] = _suggest_range(trial, dimension)
    return params


def _suggest_range(trial: Trial, dimension: SearchRange) -> Any:
    if dimension.type == "float":
        return trial.suggest_float(dimension.key, **dimension.options)
    if dimension.type == "int":
        return trial.suggest_int(dimension.key, **dimension.options)
    return trial.suggest_categorical(dimension.key, dimension.options["choices"])


def fail_dead_trials(study: optuna.Study, storage: BaseStorage) -> list[str]:
    """Fail the RUNNING trials that a killed process on this machine left behind; returns their run names."""
    names = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("host") == socket.gethostname() and not _alive(trial.user_attrs.get("pid")):
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            names.append(str(trial.user_attrs.get("run", trial.number)))
    return names


def retry_failed_runs(study: optuna.Study) -> list[str]:
    """Enqueue again every run whose latest trial failed (crashed, or killed with its process), with the same
    values and run name, so its folder's last.ckpt is resumed. GridSampler counts a failed point as done,
    so without this a grid would never finish it."""
    latest: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        if "run" in trial.user_attrs:
            latest[trial.user_attrs["run"]] = trial
    retried = [name for name, trial in latest.items() if trial.state == TrialState.FAIL]
    for name in retried:
        study.enqueue_trial(latest[name].params, user_attrs={"run": name})
    return retried


def run_trials(study: optuna.Study, objective: Objective, n_trials: int | None) -> list[str]:
    """Run up to ``n_trials`` trials (None: until nothing is left); returns the runs that failed.

    GridSampler stops an ``optimize`` call once every point has been handed out, which can be before the
    enqueued retries have run, hence the loop.
    """
    done: list[FrozenTrial] = []

    def remaining() -> int | None:
        return None if n_trials is None else n_trials - len(done)

    while remaining() != 0 and not nothing_left(study):
        before = len(done)
        study.optimize(objective, n_trials=remaining(), catch=(RunFailed,),
                       callbacks=[lambda _, trial: done.append(trial)])
        if len(done) == before:
            break
    return [str(t.user_attrs.get("run", t.number)) for t in done if t.state == TrialState.FAIL]


def nothing_left(study: optuna.Study) -> bool:
    """No retry waits and the grid is handed out (a search always has more to try)."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    sampler = study.sampler
    return not waiting and isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Objective:
    """Trains one run per trial and returns its best ``val/acc1``; a finished run folder is not trained again."""

    def __init__(self, spec: GridSpec, sampler: str, log_dir: Path, extra_args: list[str], launcher: Launcher = launch):
        self.spec, self.sampler, self.log_dir = spec, sampler, log_dir
        self.extra_args, self.launcher = extra_args, launcher

    def run_name(self, trial: Trial, params: dict[str, Any]) -> str:
        if "run" in trial.user_attrs:  # an interrupted search trial enqueued again
            return trial.user_attrs["run"]
        return self.spec.run_name(params) if self.sampler == "grid" else f"trial-{trial.number:04d}"

    def __call__(self, trial: Trial) -> float:
        params = suggest(trial, self.spec)
        name = self.run_name(trial, params)
        trial.set_user_attr("run", name)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        plan = plan_run(self.spec.base, self.spec.settings_of(params), self.log_dir, self.spec.name, name, self.extra_args)
        if is_finished(plan.run_dir):
            print(f"ablate: {name} is finished, not trained again", flush=True)
        else:
            print(f"ablate: training {name} in {plan.run_dir}", flush=True)
            outcome = self.launcher(plan, lambda epoch, accuracy: self._report(trial, epoch, accuracy))
            if outcome.stopped_early:
                raise optuna.TrialPruned(f"{name}: val/acc1 below the median of earlier trials")
            if outcome.exit_code == USER_ERROR_EXIT:
                raise RunConfigError(f"cli.py refused the settings of run {name} (its error is above); fix the grid file")
            if outcome.exit_code != 0:
                raise RunFailed(f"{name}: cli.py fit exited {outcome.exit_code}")
        accuracy = best_accuracy(plan.run_dir)
        if accuracy is None:
            raise RunFailed(f"{name}: no val/acc1 logged; does the recipe validate (trainer.limit_val_batches > 0)?")
        return accuracy

    @staticmethod
    def _report(trial: Trial, epoch: int, accuracy: float) -> bool:
        trial.report(accuracy, epoch)
        return trial.should_prune()
