"""How an ablation run ended, without training: diverged, refused, busy (another fit holds the run folder),
crashed; and which trial speaks for a run that several trials touched.

A fake launcher stands in for ``cli.py fit``: it writes the event files and the ``ablate_run.json`` record
that a real fit writes, with the exit code a real fit would have.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import REPO_ROOT
from optuna.trial import TrialState
from torch.utils.tensorboard import SummaryWriter

from ablate.__main__ import main
from ablate.grid_file import load_grid_file
from ablate.launch import RunOutcome, RunPlan
from ablate.report import result_rows
from ablate.run_record import RECORD_FILE
from ablate.study import (
    Objective,
    RunConfigError,
    make_sampler,
    open_storage,
    retry_failed_runs,
    run_trials,
)
from lightning_modules.resilience.run_lock import lock_run_folder

CONFIG_DIR = REPO_ROOT / "configs"
GRID = """
name: grid
base: smoke.yaml
variants:
  A: {model.optimizer.init_args.lr: 0.001}
  B: {model.optimizer.init_args.lr: 1.0e+30}
"""


def fit_result(plan: RunPlan, attempt: str, status: str, accuracy: float | None = 0.5, steps: int = 4) -> None:
    """What a fit leaves in its run folder: val/acc1 events and its record of this attempt."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if accuracy is not None:
        writer = SummaryWriter(str(plan.run_dir))
        writer.add_scalar("val/acc1", accuracy, steps - 1)
        writer.add_scalar("epoch", 0, steps - 1)
        writer.close()
    record = {
        "attempt": attempt,
        "status": status,
        "steps": steps,
        "epochs": 1,
        "reached_budget": status == "finished",
        "final_train_loss": float("nan") if status == "diverged" else 1.5,
        "params": 1000,
        "flops": 2000,
    }
    (plan.run_dir / RECORD_FILE).write_text(json.dumps(record))


class Fits:
    """A launcher whose fit of run ``name`` behaves as ``behaviour[name]`` says (default: finishes)."""

    def __init__(self, behaviour: dict[str, Callable[[RunPlan], RunOutcome]] | None = None) -> None:
        self.behaviour, self.trained = behaviour or {}, []

    def __call__(self, plan: RunPlan, on_epoch) -> RunOutcome:
        self.trained.append(plan.name)
        return self.behaviour.get(plan.name, finishes)(plan)


def finishes(plan: RunPlan) -> RunOutcome:
    fit_result(plan, "t-ok", "finished")
    return RunOutcome(0, False, 1.0, "t-ok")


def diverges(plan: RunPlan) -> RunOutcome:
    """The NaN guard's exit: status 2, like a refused setting, but the record of this attempt says diverged."""
    fit_result(plan, "t-nan", "diverged", accuracy=None, steps=2)
    return RunOutcome(2, False, 1.0, "t-nan")


def refused(plan: RunPlan) -> RunOutcome:
    """The parser's exit 2: no record of this attempt (an older attempt's may be there)."""
    fit_result(plan, "an-earlier-attempt", "error", accuracy=None)
    return RunOutcome(2, False, 1.0, "t-refused")


def study_of(tmp_path: Path, fits: Fits) -> tuple[optuna.Study, Objective]:
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID)
    spec = load_grid_file(grid_file, CONFIG_DIR)
    study = optuna.create_study(
        storage=open_storage(str(tmp_path / "grid.journal")),
        study_name="grid",
        sampler=make_sampler(spec, "grid", 0),
        direction="maximize",
        load_if_exists=True,
    )
    return study, Objective(spec, "grid", tmp_path / "logs", [], launcher=fits)


def statuses(study: optuna.Study, tmp_path: Path) -> dict[str, str]:
    return {row.run: row.status for row in result_rows(study, tmp_path / "logs" / "grid")}


def test_a_diverged_point_is_a_result_the_other_points_train_and_a_rerun_does_not_retry_it(tmp_path: Path) -> None:
    fits = Fits({"B": diverges})
    study, objective = study_of(tmp_path, fits)
    assert run_trials(study, objective, None) == []  # not a failure: nothing to retry
    assert sorted(fits.trained) == ["A", "B"]
    rows = {row.run: row for row in result_rows(study, tmp_path / "logs" / "grid")}
    assert rows["A"].status == "complete" and rows["A"].final_val_acc1 == pytest.approx(0.5)
    assert rows["B"].status == "diverged" and rows["B"].best_val_acc1 is None and "diverged" in rows["B"].note

    assert retry_failed_runs(study) == []
    rerun_study, rerun_objective = study_of(tmp_path, fits)  # the same journal: the rerun of the command
    assert run_trials(rerun_study, rerun_objective, None) == []
    assert sorted(fits.trained) == ["A", "B"]  # nothing trained again, the diverged point included


def test_a_diverged_run_is_not_trained_again_even_by_a_new_study(tmp_path: Path) -> None:
    fits = Fits({"B": diverges})
    study, objective = study_of(tmp_path, fits)
    run_trials(study, objective, None)
    (tmp_path / "grid.journal").unlink()  # the run folders remember: a fresh journal reuses them
    fresh, fresh_objective = study_of(tmp_path, fits)
    run_trials(fresh, fresh_objective, None)
    assert sorted(fits.trained) == ["A", "B"]
    assert statuses(fresh, tmp_path) == {"A": "complete", "B": "diverged"}


def test_exit_2_without_a_record_of_this_attempt_is_a_refused_setting_that_stops_the_study(tmp_path: Path) -> None:
    study, objective = study_of(tmp_path, Fits({"A": refused, "B": refused}))
    with pytest.raises(RunConfigError, match="fix the grid file"):
        run_trials(study, objective, None)


def test_a_crash_during_training_fails_that_run_only(tmp_path: Path) -> None:
    def crashes(plan: RunPlan) -> RunOutcome:
        fit_result(plan, "t-crash", "error", accuracy=None)
        return RunOutcome(2, False, 1.0, "t-crash")  # e.g. out of memory: a user error after training began

    fits = Fits({"B": crashes})
    study, objective = study_of(tmp_path, fits)
    assert run_trials(study, objective, None) == ["B"]
    assert retry_failed_runs(study) == ["B"]


def test_a_run_folder_whose_lock_is_held_is_skipped_not_blamed_on_the_grid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fits = Fits()
    study, objective = study_of(tmp_path, fits)
    held = lock_run_folder(tmp_path / "logs" / "grid" / "B")  # a live fit of another process (or a killed ablate's)
    try:
        assert run_trials(study, objective, None) == []  # busy is not a failure of this study
    finally:
        os.close(held)
    assert fits.trained == ["A"]
    out = capsys.readouterr().out
    assert f"another process (pid {os.getpid()}) is training in" in out and "fix the grid file" not in out
    assert statuses(study, tmp_path) == {"A": "complete", "B": "busy"}
    assert retry_failed_runs(study) == []  # only runs that failed are retried; B is another process's


def test_a_fit_refused_by_the_lock_after_the_check_counts_as_busy(tmp_path: Path) -> None:
    holder: list[int] = []

    def raced(plan: RunPlan) -> RunOutcome:  # another process took the folder between the check and the fit's lock
        holder.append(lock_run_folder(plan.run_dir))
        return RunOutcome(2, False, 1.0, "t-raced")

    study, objective = study_of(tmp_path, Fits({"B": raced}))
    try:
        assert run_trials(study, objective, None) == []
    finally:
        os.close(holder[0])
    assert statuses(study, tmp_path) == {"A": "complete", "B": "busy"}


def test_a_finished_run_is_reported_finished_though_a_duplicate_trial_found_it_busy(tmp_path: Path) -> None:
    fits = Fits()
    study, objective = study_of(tmp_path, fits)
    run_trials(study, objective, None)
    study.add_trial(
        optuna.trial.create_trial(  # a second process's trial of A, which found A training
            state=TrialState.FAIL,
            params={"variant": "A"},
            user_attrs={"run": "A", "outcome": "busy"},
            distributions={"variant": optuna.distributions.CategoricalDistribution(["A", "B"])},
        )
    )
    assert statuses(study, tmp_path) == {"A": "complete", "B": "complete"}
    assert retry_failed_runs(study) == []


def test_a_damaged_record_is_skipped_with_a_warning_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fits = Fits()
    study, objective = study_of(tmp_path, fits)
    run_trials(study, objective, None)
    damaged = tmp_path / "logs" / "grid" / "A" / RECORD_FILE
    damaged.write_text('{"steps": 4, "epo')
    rows = {row.run: row for row in result_rows(study, tmp_path / "logs" / "grid")}
    assert rows["A"].steps is None and rows["A"].final_val_acc1 == pytest.approx(0.5) and rows["B"].steps == 4
    assert str(damaged) in capsys.readouterr().err


def test_a_rerun_next_to_a_fit_left_running_names_that_fit_and_trains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ablate killed with SIGKILL leaves its fit running; the rerun must say so, not blame the grid file."""
    (tmp_path / "grid.yaml").write_text("name: grid\nbase: smoke.yaml\nvariants: {A: {}}\n")
    held = lock_run_folder(tmp_path / "logs" / "grid" / "A")
    argv = ["ablate", "--config", str(tmp_path / "grid.yaml"), "--log-dir", str(tmp_path / "logs")]
    monkeypatch.setattr("sys.argv", argv)
    try:
        assert main() == 0
    finally:
        os.close(held)
    captured = capsys.readouterr()
    assert f"another process (pid {os.getpid()}) is training in" in captured.out
    assert "still training in another process: A" in captured.out
    assert "fix the grid file" not in captured.out + captured.err
    assert "| A | busy |" in (tmp_path / "logs" / "grid" / "results.md").read_text()


def test_a_point_another_live_ablate_is_starting_is_skipped_before_its_fit_takes_the_lock(tmp_path: Path) -> None:
    fits = Fits()
    study, objective = study_of(tmp_path, fits)
    study.add_trial(
        optuna.trial.create_trial(  # another ablate on this machine (alive: our parent) has just taken B
            state=TrialState.RUNNING,
            params={"variant": "B"},
            user_attrs={"run": "B", "host": socket.gethostname(), "pid": os.getppid()},
            distributions={"variant": optuna.distributions.CategoricalDistribution(["A", "B"])},
        )
    )
    study.enqueue_trial({"variant": "B"})  # what GridSampler hands out once every point has started
    study.enqueue_trial({"variant": "A"})
    run_trials(study, objective, 2)
    assert fits.trained == ["A"]
    assert statuses(study, tmp_path) == {"A": "complete", "B": "running"}
