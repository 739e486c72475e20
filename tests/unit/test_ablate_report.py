"""The results table of an ablation: what each run did, unequal budgets flagged, seeds as mean ± spread,
differences within the spread called noise, and no checkpoint ever unpickled to fill it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from torch.utils.tensorboard import SummaryWriter

from ablate.launch import WALL_TIME_FILE
from ablate.report import noise_lines, point_summaries, result_rows, write_report
from ablate.run_record import RECORD_FILE

POINTS = ["C-C-T-T", "C-C-C-C"]


def finished_run(
    grid_dir: Path,
    study: optuna.Study,
    point: str,
    seed: int,
    accuracy: float,
    steps: int = 10,
    reached: bool = True,
    loss: float = 1.0,
) -> None:
    """A run folder as a finished fit and ablate leave it, and its trial."""
    name = f"{point}_seed={seed}"
    run_dir = grid_dir / name
    writer = SummaryWriter(str(run_dir))
    for epoch, value in enumerate((accuracy - 0.1, accuracy + 0.05, accuracy)):  # best is not the final one
        writer.add_scalar("val/acc1", value, epoch * 10 + 9)
        writer.add_scalar("epoch", epoch, epoch * 10 + 9)
    writer.close()
    record = {
        "attempt": "x",
        "status": "finished",
        "steps": steps,
        "epochs": 3,
        "reached_budget": reached,
        "final_train_loss": loss,
        "params": 1_280_000,
        "flops": 15_000_000,
        "max_epochs": 3,
        "max_steps": -1,
    }
    (run_dir / RECORD_FILE).write_text(json.dumps(record))
    (run_dir / WALL_TIME_FILE).write_text(json.dumps({"seconds": 60.0, "load_avg_1min": 3.5, "cpu_count": 2}))
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=accuracy + 0.05,
            params={"variant": point, "seed_everything": seed},
            distributions={
                "variant": CategoricalDistribution(POINTS),
                "seed_everything": CategoricalDistribution([0, 1]),
            },
            user_attrs={"run": name, "point": point, "outcome": "complete"},
        )
    )


def test_seeds_are_aggregated_per_point_as_mean_and_spread(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for seed, accuracy in enumerate((0.50, 0.54)):
        finished_run(tmp_path, study, "C-C-T-T", seed, accuracy, loss=1.0 + seed)
    for seed, accuracy in enumerate((0.30, 0.30)):
        finished_run(tmp_path, study, "C-C-C-C", seed, accuracy)
    rows = result_rows(study, tmp_path)
    assert [(row.run, row.seed, row.steps, row.epochs) for row in rows] == [
        ("C-C-C-C_seed=0", 0, 10, 3),
        ("C-C-C-C_seed=1", 1, 10, 3),
        ("C-C-T-T_seed=0", 0, 10, 3),
        ("C-C-T-T_seed=1", 1, 10, 3),
    ]
    assert rows[2].best_val_acc1 == pytest.approx(0.55) and rows[2].final_val_acc1 == pytest.approx(0.50)
    summary = {s.point: s for s in point_summaries(rows)}["C-C-T-T"]
    accuracy, loss = summary.spread("final_val_acc1"), summary.spread("final_train_loss")
    assert accuracy.mean == pytest.approx(0.52) and accuracy.spread == pytest.approx(0.02 * 2**0.5)
    assert loss.mean == pytest.approx(1.5) and loss.spread == pytest.approx(0.5**0.5)

    write_report(study, tmp_path, "grid")
    markdown = (tmp_path / "results.md").read_text()
    row = "| C-C-T-T | 2 complete | 1.28 | 0.015 | 10 | 3 | 1.500 ± 0.707 | 57.00 ± 2.83% | 52.00 ± 2.83% |"
    assert row in markdown
    assert "Budget: every finished run trained 10 optimizer steps (3 epochs)." in markdown
    assert "C-C-T-T > C-C-C-C (22.00 points lower, spread 2.83: beyond the spread)" in markdown
    assert "only when nothing else ran" in markdown  # the img/s caveat under the table
    for table_line in (line for line in markdown.splitlines() if line.startswith("|")):  # one cell per column
        assert table_line.count("|") in (11, 13), table_line
    with (tmp_path / "results.csv").open() as handle:
        first = next(csv.DictReader(handle))
    for column in (
        "steps",
        "epochs",
        "final_train_loss",
        "best_val_acc1",
        "final_val_acc1",
        "wall_time_s",
        "seed",
        "load_avg_1min",
        "cpu_count",
        "images_per_sec",
    ):
        assert column in first
    assert first["load_avg_1min"] == "3.5" and first["cpu_count"] == "2"
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_gap_smaller_than_the_spread_is_called_noise(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for seed, accuracy in enumerate((0.40, 0.50)):
        finished_run(tmp_path, study, "C-C-T-T", seed, accuracy)
    for seed, accuracy in enumerate((0.44, 0.44)):
        finished_run(tmp_path, study, "C-C-C-C", seed, accuracy)
    (line,) = noise_lines(point_summaries(result_rows(study, tmp_path)))
    assert "C-C-T-T > C-C-C-C (1.00 points lower, spread 7.07: within noise)" in line


def test_unequal_budgets_and_runs_stopped_short_are_flagged(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    finished_run(tmp_path, study, "C-C-T-T", 0, 0.5, steps=10)
    finished_run(tmp_path, study, "C-C-T-T", 1, 0.5, steps=10)
    finished_run(tmp_path, study, "C-C-C-C", 0, 0.6, steps=4, reached=False)  # a max_time limit cut it
    rows = {row.run: row for row in result_rows(study, tmp_path)}
    assert rows["C-C-C-C_seed=0"].note.startswith("unequal budget: 4 steps, most runs 10")
    assert "stopped short" in rows["C-C-C-C_seed=0"].note and rows["C-C-T-T_seed=0"].note == ""
    write_report(study, tmp_path, "grid")
    markdown = (tmp_path / "results.md").read_text()
    assert "**Unequal budgets**: the finished runs trained 4 to 10 optimizer steps" in markdown
    assert "Stopped short of the budget: C-C-C-C_seed=0." in markdown


class _RunsCode:
    """Unpickling this creates ``path``: stands in for any code a stranger's checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_the_table_never_unpickles_a_checkpoint_from_the_run_folders(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    finished_run(tmp_path, study, "C-C-T-T", 0, 0.5)
    ran = tmp_path / "payload-ran"
    (tmp_path / "C-C-T-T_seed=0" / "checkpoints").mkdir()
    torch.save({"hyper_parameters": _RunsCode(ran)}, tmp_path / "C-C-T-T_seed=0" / "checkpoints" / "last.ckpt")
    (row,) = result_rows(study, tmp_path)
    assert not ran.exists()
    assert row.params == 1_280_000 and row.flops == 15_000_000  # from the fit's own record


def test_damaged_files_in_a_run_folder_leave_gaps_in_the_table_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = optuna.create_study(direction="maximize")
    finished_run(tmp_path, study, "C-C-T-T", 0, 0.5)
    run_dir = tmp_path / "C-C-T-T_seed=0"
    for events in run_dir.glob("events.out.tfevents.*"):
        events.write_bytes(b"garbage" * 10)
    (run_dir / WALL_TIME_FILE).write_text("{trunc")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04truncated")
    write_report(study, tmp_path, "grid")
    (row,) = result_rows(study, tmp_path)
    assert row.final_val_acc1 is None and row.wall_time_s == 0.0 and row.steps == 10
    assert str(run_dir / WALL_TIME_FILE) in capsys.readouterr().err
    assert "| C-C-T-T_seed=0 | complete | 10 |" in (tmp_path / "results.md").read_text()
