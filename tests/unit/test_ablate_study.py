"""The Optuna side of ablate without training: TPE trials, pruning on val/acc1, resuming interrupted runs.

A fake launcher stands in for ``cli.py fit``: it writes the event files a fit would write, so the
objective reads accuracies exactly as it does after a real run.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import REPO_ROOT
from optuna.trial import TrialState
from torch.utils.tensorboard import SummaryWriter

from ablate.grid_file import load_grid_file
from ablate.launch import FINISHED_MARKER, RunOutcome, RunPlan
from ablate.report import result_rows
from ablate.study import (
    Objective,
    fail_dead_trials,
    make_pruner,
    make_sampler,
    open_storage,
    retry_failed_runs,
    run_trials,
)

CONFIG_DIR = REPO_ROOT / "configs"
SEARCH = """
name: search
base: smoke.yaml
search:
  model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  data.init_args.batch_size: {type: categorical, choices: [32, 64]}
"""


GRID = """
name: grid
base: smoke.yaml
variants:
  C-C-T-T: {model.model_overrides.layout: CCTT}
  C-C-C-C: {model.model_overrides.layout: CCCC}
"""


class FakeFit:
    """Logs the next accuracy curve of ``curves`` epoch by epoch and stops when the pruner says so."""

    def __init__(self, curves: list[list[float]]) -> None:
        self.curves, self.plans = list(curves), []

    def __call__(self, plan: RunPlan, on_epoch) -> RunOutcome:
        self.plans.append(plan)
        writer = SummaryWriter(str(plan.run_dir))
        for epoch, accuracy in enumerate(self.curves.pop(0)):
            writer.add_scalar("val/acc1", accuracy, epoch * 10 + 9)
            writer.add_scalar("epoch", epoch, epoch * 10 + 9)
            writer.flush()
            if on_epoch(epoch, accuracy):
                writer.close()
                return RunOutcome(143, True, 1.0)
        writer.close()
        return RunOutcome(0, False, 1.0)


def search_study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.BaseStorage, Objective, FakeFit]:
    grid_file = tmp_path / "search.yaml"
    grid_file.write_text(SEARCH)
    spec = load_grid_file(grid_file, CONFIG_DIR)
    storage = open_storage(str(tmp_path / "logs" / "search" / "optuna.journal"))
    study = optuna.create_study(
        storage=storage,
        sampler=make_sampler(spec, "tpe", 0),
        pruner=make_pruner("tpe", 1),
        study_name="search-tpe",
        direction="maximize",
        load_if_exists=True,
    )
    fake = FakeFit([[0.5, 0.6, 0.7], [0.1, 0.2, 0.3]])
    return study, storage, Objective(spec, "tpe", tmp_path / "logs", [], launcher=fake), fake


def test_tpe_trials_take_values_from_the_ranges_and_a_worse_curve_is_pruned(tmp_path: Path) -> None:
    study, _, objective, fake = search_study(tmp_path)
    study.optimize(objective, n_trials=2)
    first, second = study.trials
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(0.7)
    assert second.state == TrialState.PRUNED and second.intermediate_values == {0: pytest.approx(0.1)}
    assert 1e-4 <= first.params["model.optimizer.init_args.lr"] <= 1e-2
    argv = fake.plans[0].argv
    assert f"--model.optimizer.init_args.lr={first.params['model.optimizer.init_args.lr']}" in argv
    assert f"--data.init_args.batch_size={first.params['data.init_args.batch_size']}" in argv
    assert argv[-1] == "--ckpt_path=last" and "--trainer.logger.init_args.version=trial-0000" in argv
    rows = result_rows(study, tmp_path / "logs" / "search")
    assert [(row.run, row.status, row.best_val_acc1) for row in rows] == [
        ("trial-0000", "complete", pytest.approx(0.7)),
        ("trial-0001", "pruned", pytest.approx(0.1)),
    ]


def test_a_killed_search_trial_is_enqueued_again_under_its_run_name(tmp_path: Path) -> None:
    study, storage, objective, fake = search_study(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    trial = study.ask()
    trial.suggest_float("model.optimizer.init_args.lr", 1e-4, 1e-2, log=True)
    trial.suggest_categorical("data.init_args.batch_size", [32, 64])
    for key, value in {"run": "trial-0000", "host": socket.gethostname(), "pid": int(dead.stdout)}.items():
        trial.set_user_attr(key, value)
    assert fail_dead_trials(study, storage) == ["trial-0000"]
    assert retry_failed_runs(study) == ["trial-0000"]
    assert retry_failed_runs(study) == []  # already waiting
    assert run_trials(study, objective, n_trials=1) == []
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == study.trials[0].params
    assert fake.plans[0].name == "trial-0000"  # the same folder, so --ckpt_path last resumes it
    assert fail_dead_trials(study, storage) == []  # only dead processes' trials are failed


def test_a_grid_hands_out_each_point_once_and_skips_a_finished_run_folder(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID)
    spec = load_grid_file(grid_file, CONFIG_DIR)
    sampler = make_sampler(spec, "grid", 0)
    study = optuna.create_study(
        storage=open_storage(str(tmp_path / "grid.journal")),
        sampler=sampler,
        pruner=make_pruner("grid", 1),
        direction="maximize",
    )
    fake = FakeFit([[0.4, 0.5], [0.3]])
    objective = Objective(spec, "grid", tmp_path / "logs", ["--trainer.max_steps=3"], launcher=fake)
    study.optimize(objective, n_trials=1)
    first = fake.plans[0]
    assert first.argv[first.argv.index("--trainer.max_steps=3") + 1] == "--ckpt_path=last"
    assert not sampler.is_exhausted(study)
    other = ({"C-C-T-T", "C-C-C-C"} - {first.name}).pop()
    writer = SummaryWriter(str(tmp_path / "logs" / "grid" / other))  # a run another machine finished
    writer.add_scalar("val/acc1", 0.9, 5)
    writer.close()
    (tmp_path / "logs" / "grid" / other / FINISHED_MARKER).write_text("{}")
    assert run_trials(study, objective, None) == []  # until every point has a finished trial
    assert len(fake.plans) == 1 and sampler.is_exhausted(study)
    assert {t.user_attrs["run"]: t.value for t in study.trials} == {
        first.name: pytest.approx(0.5),
        other: pytest.approx(0.9),
    }


def test_a_grid_point_whose_run_crashed_is_trained_again_on_the_rerun(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID)
    spec = load_grid_file(grid_file, CONFIG_DIR)
    study = optuna.create_study(
        storage=open_storage(str(tmp_path / "grid.journal")),
        sampler=make_sampler(spec, "grid", 0),
        direction="maximize",
    )
    fake = FakeFit([[0.4], [0.5], [0.6]])
    crashing = iter([RunOutcome(1, False, 1.0)])

    def crash_once(plan: RunPlan, on_epoch) -> RunOutcome:
        return next(crashing, None) or fake(plan, on_epoch)

    objective = Objective(spec, "grid", tmp_path / "logs", [], launcher=crash_once)
    crashed = run_trials(study, objective, None)
    assert len(crashed) == 1 and len(fake.plans) == 1  # GridSampler counts the crashed point as done
    assert retry_failed_runs(study) == crashed
    assert run_trials(study, objective, None) == []
    assert [plan.name for plan in fake.plans][1:] == crashed
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]
