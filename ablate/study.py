"""The Optuna study behind an ablation: shared storage, the sampler, and one trial = one ``cli.py fit``.

Optuna hands out the work, so several machines pointed at the same storage split a grid between them:
GridSampler gives each trial a grid point no one has finished or started (a point whose trial died is
handed out again once the rest are taken), TPE proposes values inside the file's ``search:`` ranges
and MedianPruner stops TPE trials whose ``val/acc1`` after an epoch is below the median of earlier
trials at that epoch.

How a run ends decides what happens next. Finished: its best ``val/acc1`` is the trial's value.
Diverged (the fit's NaN guard stopped it, as its record says): a result, shown in the table and never
trained again (the trial is pruned). Refused before training (cli.py exit 2 and no record of this
attempt): its settings are wrong, so are every other run's, and the study stops. Busy (another fit holds
the run folder's ``fit.lock``): skipped, another process is training it. Anything else failed: the
other runs go on and a rerun tries it again. A run trained by several trials (a retry, a duplicate from a
second process) is reported by its best one.
"""

from __future__ import annotations

import json
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
from ablate.launch import (
    RunOutcome,
    RunPlan,
    finished_outcome,
    is_finished,
    launch,
    lock_holder,
    mark_finished,
    plan_run,
)
from ablate.metrics import best_accuracy
from ablate.run_record import read_record

USER_ERROR_EXIT = 2
HEARTBEAT_SECONDS = 60  # RDB storages only: a trial without a beat for GRACE_SECONDS is failed by any worker
GRACE_SECONDS = 600
SAMPLERS = ("grid", "tpe")
Launcher = Callable[[RunPlan, Callable[[int, float], bool]], RunOutcome]


class RunFailed(RuntimeError):
    """A fit crashed or was killed; the study goes on with the other runs."""


class RunBusy(RunFailed):
    """Another live fit holds the run folder's lock: the run is being trained elsewhere, this trial skips it."""


class RunConfigError(RuntimeError):
    """cli.py refused the run's settings (exit 2): every other run would be refused too."""


class StudyFileError(ValueError):
    """The study's storage cannot be read; the message names the file and the fix."""


# A run's status is the best of its trials' (a duplicate that found the run busy does not hide its result).
STATUS_RANK = {"complete": 5, "diverged": 4, "pruned": 4, "running": 3, "waiting": 2, "fail": 1, "busy": 0}


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
    check_journal(Path(storage))
    return JournalStorage(JournalFileBackend(storage))


def check_journal(path: Path) -> None:
    """Refuse a journal with a line that is not JSON (a torn write, an edit): Optuna raises on it mid-study."""
    if not path.is_file():
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                json.loads(line)
            except ValueError:
                raise StudyFileError(
                    f"{path}: line {number} is not an Optuna journal record, so the study cannot be read; move the "
                    "file away and rerun (finished runs are not trained again, the others resume from last.ckpt)"
                ) from None


def make_sampler(spec: GridSpec, sampler: str, seed: int) -> optuna.samplers.BaseSampler:
    if sampler != "grid" and spec.seeds:
        raise GridFileError(
            f"{spec.path}: seeds repeat grid points; a search (--sampler tpe) takes "
            "seed_everything as a search: range instead"
        )
    if sampler == "grid":
        if not spec.grid_space():
            raise GridFileError(
                f"{spec.path} has no variants: or axes: for --sampler grid; add some, or use --sampler tpe"
            )
        return optuna.samplers.GridSampler(spec.grid_space(), seed=seed)
    if not spec.search:
        raise GridFileError(
            f"{spec.path} has no search: ranges for --sampler tpe; add e.g. model.optimizer.init_args.lr: "
            "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
        )
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


def trial_status(trial: FrozenTrial) -> str:
    """complete, diverged, pruned, running, waiting, fail, or busy (skipped: another fit had the run folder)."""
    outcome = trial.user_attrs.get("outcome")
    if trial.state == TrialState.PRUNED and outcome == "diverged":
        return "diverged"
    if trial.state == TrialState.FAIL and outcome == "busy":
        return "busy"
    return trial.state.name.lower()


def best_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Run name -> its trial with the best status (the latest among equals)."""
    best: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        name = trial.user_attrs.get("run")
        if name is None:
            continue
        if name not in best or STATUS_RANK[trial_status(trial)] >= STATUS_RANK[trial_status(best[name])]:
            best[name] = trial
    return best


def retry_failed_runs(study: optuna.Study) -> list[str]:
    """Enqueue again every run that only failed (crashed, or killed with its process), with the same values
    and run name, so its folder's last.ckpt is resumed. GridSampler counts a failed point as done, so
    without this a grid would never finish it. Diverged runs are results and are not retried."""
    best = best_trials(study)
    retried = [name for name, trial in best.items() if trial_status(trial) == "fail"]
    for name in retried:
        study.enqueue_trial(best[name].params, user_attrs={"run": name})
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
        study.optimize(
            objective, n_trials=remaining(), catch=(RunFailed,), callbacks=[lambda _, trial: done.append(trial)]
        )
        if len(done) == before:
            break
    return [str(t.user_attrs.get("run", t.number)) for t in done if trial_status(t) == "fail"]


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

    def __init__(
        self,
        spec: GridSpec,
        sampler: str,
        log_dir: Path,
        extra_args: list[str],
        launcher: Launcher = launch,
        n_trials: int | None = None,
    ):
        self.spec, self.sampler, self.log_dir = spec, sampler, log_dir
        self.extra_args, self.launcher = extra_args, launcher
        self.total = spec.grid_size() if sampler == "grid" else n_trials
        self.started = 0  # trials of this process

    def run_name(self, trial: Trial, params: dict[str, Any]) -> str:
        if "run" in trial.user_attrs:  # an interrupted search trial enqueued again
            return trial.user_attrs["run"]
        return self.spec.run_name(params) if self.sampler == "grid" else f"trial-{trial.number:04d}"

    def progress(self, trial: Trial, name: str) -> str:
        """``[k/N]``: grid points handed out so far (by any process) of the grid's, or this process's trials."""
        self.started += 1
        if self.sampler != "grid":
            return f"[{self.started}/{self.total or '?'}]"
        names = {t.user_attrs.get("run") for t in trial.study.get_trials(deepcopy=False)} - {None}
        return f"[{len(names | {name})}/{self.total}]"

    def __call__(self, trial: Trial) -> float:
        params = suggest(trial, self.spec)
        name = self.run_name(trial, params)
        trial.set_user_attr("run", name)
        trial.set_user_attr("point", self.spec.point_name(params) if self.sampler == "grid" else name)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        progress = self.progress(trial, name)
        plan = plan_run(
            self.spec.base, self.spec.settings_of(params), self.log_dir, self.spec.name, name, self.extra_args
        )
        if is_finished(plan.run_dir):
            print(f"ablate: {progress} {name} is finished, not trained again", flush=True)
            return self._result(trial, plan, finished_outcome(plan.run_dir))
        self._refuse_busy(trial, plan)
        print(f"ablate: {progress} training {name} in {plan.run_dir}", flush=True)
        outcome = self.launcher(plan, lambda epoch, accuracy: self._report(trial, epoch, accuracy))
        if outcome.stopped_early:
            raise optuna.TrialPruned(f"{name}: val/acc1 below the median of earlier trials")
        return self._result(trial, plan, self._ending(trial, plan, outcome))

    def _ending(self, trial: Trial, plan: RunPlan, outcome: RunOutcome) -> str:
        """complete or diverged, else the exception that says what happened to the fit."""
        if outcome.exit_code == 0:
            mark_finished(plan.run_dir, "complete")
            return "complete"
        record = read_record(plan.run_dir)
        if record is None or record.get("attempt") != outcome.attempt:  # this launch never started training
            if outcome.exit_code != USER_ERROR_EXIT:
                raise RunFailed(f"{plan.name}: cli.py fit exited {outcome.exit_code} before training")
            if is_finished(plan.run_dir):  # another process finished it while this one was starting
                return finished_outcome(plan.run_dir)
            self._refuse_busy(trial, plan)
            raise RunConfigError(
                f"cli.py refused the settings of run {plan.name} before training (its error is "
                "above); fix the grid file or its base config, then rerun"
            )
        if record.get("status") == "diverged":
            mark_finished(plan.run_dir, "diverged")
            return "diverged"
        raise RunFailed(
            f"{plan.name}: cli.py fit exited {outcome.exit_code} during training "
            f"({record.get('error', 'no error recorded')})"
        )

    def _refuse_busy(self, trial: Trial, plan: RunPlan) -> None:
        holder = lock_holder(plan.run_dir) or self._other_ablate(trial, plan.name)
        if holder is None:
            return
        trial.set_user_attr("outcome", "busy")
        message = (
            f"{plan.name}: another process (pid {holder}) is training in {plan.run_dir}, so it is skipped "
            "here; if no ablate is running it, an ablate that was killed left its fit: wait for it to end "
            f"(or kill {holder}), then rerun to tabulate it"
        )
        print(f"ablate: {message}", flush=True)
        raise RunBusy(message)

    @staticmethod
    def _other_ablate(trial: Trial, name: str) -> str | None:
        """The pid of another live ablate on this machine whose running trial has this run: its fit may still be
        starting up, before it takes the folder's lock. (Other machines' trials are left to the lock: a journal
        keeps a dead machine's trial running forever.)"""
        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = other.user_attrs
            if (
                other.number != trial.number
                and attrs.get("run") == name
                and attrs.get("host") == socket.gethostname()
                and attrs.get("pid") != os.getpid()
                and _alive(attrs.get("pid"))
            ):
                return str(attrs["pid"])
        return None

    def _result(self, trial: Trial, plan: RunPlan, ending: str) -> float:
        trial.set_user_attr("outcome", ending)
        if ending == "diverged":
            print(
                f"ablate: {plan.name} diverged (its training loss became nan or inf); it is shown as diverged in "
                "the table and not trained again, the other runs go on",
                flush=True,
            )
            raise optuna.TrialPruned(f"{plan.name} diverged")
        accuracy = best_accuracy(plan.run_dir)
        if accuracy is None:
            raise RunFailed(
                f"{plan.name}: no val/acc1 logged; does the recipe validate (trainer.limit_val_batches > 0)?"
            )
        return accuracy

    @staticmethod
    def _report(trial: Trial, epoch: int, accuracy: float) -> bool:
        trial.report(accuracy, epoch)
        return trial.should_prune()
