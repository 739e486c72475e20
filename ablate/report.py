"""The results of an ablation: one table (CSV and Markdown) and one plot, next to the run folders."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

from ablate.launch import wall_time_so_far
from ablate.metrics import best_accuracy, median_throughput, network_size

REPORTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class ResultRow:
    run: str
    status: str
    params: int | None
    flops: int | None
    images_per_sec: float | None
    best_val_acc1: float | None
    wall_time_s: float


def result_rows(study: optuna.Study, grid_dir: Path) -> list[ResultRow]:
    """One row per run folder, from its latest finished trial (a run retried after a crash counts once)."""
    latest: dict[str, optuna.trial.FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=REPORTED_STATES):
        if "run" in trial.user_attrs:
            latest[trial.user_attrs["run"]] = trial
    rows = []
    for name, trial in sorted(latest.items()):
        run_dir = grid_dir / name
        size = network_size(run_dir)
        rows.append(ResultRow(
            run=name,
            status=trial.state.name.lower(),
            params=size.params if size else None,
            flops=size.flops if size else None,
            images_per_sec=median_throughput(run_dir),
            best_val_acc1=best_accuracy(run_dir),
            wall_time_s=round(wall_time_so_far(run_dir), 1),
        ))
    return rows


def write_csv(rows: list[ResultRow], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ResultRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)


def _cell(value: float | None, style: str) -> str:
    return "-" if value is None else format(value, style)


def write_markdown(rows: list[ResultRow], path: Path, title: str) -> None:
    lines = [
        f"# {title}",
        "",
        "| run | status | params (M) | forward GFLOPs/image | img/s (median) | best val top-1 | wall time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        params = None if row.params is None else row.params / 1e6
        flops = None if row.flops is None else row.flops / 1e9
        accuracy = None if row.best_val_acc1 is None else 100 * row.best_val_acc1
        lines.append(f"| {row.run} | {row.status} | {_cell(params, '.2f')} | {_cell(flops, '.3f')} | "
                     f"{_cell(row.images_per_sec, ',.0f')} | {_cell(accuracy, '.2f')}% | {row.wall_time_s:,.0f} |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(rows: list[ResultRow], path: Path, title: str) -> None:
    """Best val top-1 against parameters and against wall time, each point labelled with its run."""
    shown = [row for row in rows if row.best_val_acc1 is not None]
    figure, (by_params, by_time) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, x_of, label in (
        (by_params, lambda row: (row.params or 0) / 1e6, "parameters (M)"),
        (by_time, lambda row: row.wall_time_s / 60, "wall time (min)"),
    ):
        for row in shown:
            axis.scatter(x_of(row), 100 * row.best_val_acc1, marker="x" if row.status == "pruned" else "o")
            axis.annotate(row.run, (x_of(row), 100 * row.best_val_acc1), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    by_params.set_ylabel("best val top-1 (%)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(study: optuna.Study, grid_dir: Path, title: str) -> list[Path]:
    """results.csv, results.md and results.png in ``grid_dir``; returns their paths."""
    rows = result_rows(study, grid_dir)
    paths = [grid_dir / "results.csv", grid_dir / "results.md", grid_dir / "results.png"]
    grid_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, paths[0])
    write_markdown(rows, paths[1], title)
    write_plot(rows, paths[2], title)
    return paths
