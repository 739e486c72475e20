"""The results of an ablation: a table per run (CSV), one per grid point (Markdown, mean ± spread over
seeds) and one figure, next to the run folders.

The table shows what each run actually did (optimizer steps, epochs, final train loss), so runs that
trained different amounts are flagged instead of ranked, and it says which differences are within the
seed-to-seed spread. Throughput and wall time depend on everything else the machine ran, so each run
carries the load average it ran under.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt
import optuna

from ablate.launch import launch_record
from ablate.metrics import best_accuracy, final_accuracy, median_throughput
from ablate.run_record import read_record
from ablate.study import best_trials, trial_status

POINT_HEADER = (
    "| point | runs | params (M) | forward GFLOPs/image | optimizer steps | epochs | final train loss | "
    "best val top-1 | final val top-1 | wall time (s) |"
)
RUN_HEADER = (
    "| run | status | steps | epochs | final train loss | best val top-1 | final val top-1 | wall time (s) | "
    "img/s (median) | load avg (1 min) | CPUs | note |"
)
LOAD_CAVEAT = (
    "img/s and wall time measure the machine as much as the network: they compare variants only "
    "when nothing else ran (load average near or below the CPU count, the run itself included). "
    "Steps, epochs and accuracies do not depend on the load."
)


@dataclass(frozen=True)
class ResultRow:
    run: str
    point: str
    seed: int | None
    status: str
    params: int | None
    flops: int | None
    steps: int | None
    epochs: int | None
    reached_budget: bool | None
    final_train_loss: float | None
    best_val_acc1: float | None
    final_val_acc1: float | None
    wall_time_s: float
    images_per_sec: float | None
    load_avg_1min: float | None
    cpu_count: int | None
    note: str = ""


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over a point's finished runs (None: no runs; spread None: one run)."""

    mean: float | None
    spread: float | None

    @classmethod
    def of(cls, values: list[float | None]) -> Spread:
        known = [v for v in values if v is not None and math.isfinite(v)]
        if not known:
            return cls(None, None)
        return cls(statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None)

    def cell(self, scale: float = 1.0, style: str = ".2f", suffix: str = "") -> str:
        if self.mean is None:
            return "-"
        text = format(self.mean * scale, style)
        return text + (f" ± {format(self.spread * scale, style)}" if self.spread is not None else "") + suffix


@dataclass(frozen=True)
class PointSummary:
    point: str
    runs: list[ResultRow]

    @property
    def finished(self) -> list[ResultRow]:
        return [row for row in self.runs if row.status == "complete"]

    def spread(self, attribute: str) -> Spread:
        return Spread.of([getattr(row, attribute) for row in self.finished])

    def statuses(self) -> str:
        counts = Counter(row.status for row in self.runs)
        return ", ".join(f"{n} {status}" if len(self.runs) > 1 else status for status, n in sorted(counts.items()))


def result_rows(study: optuna.Study, grid_dir: Path) -> list[ResultRow]:
    """One row per run folder, from the best of its trials: a run retried after a crash counts once, and a
    duplicate trial that found it busy in another process does not hide its result."""
    rows = [_row(name, trial, grid_dir / name) for name, trial in sorted(best_trials(study).items())]
    return _flag_budgets(rows)


def _row(name: str, trial: optuna.trial.FrozenTrial, run_dir: Path) -> ResultRow:
    record = read_record(run_dir) or {}
    launched = launch_record(run_dir)
    status = trial_status(trial)
    note = ""
    if status == "diverged":
        note = f"diverged: loss not finite by step {record.get('steps', '?')}"
    elif status == "complete" and record.get("reached_budget") is False:
        note = "stopped short of its budget (a max_time limit or an early stop)"
    seed = trial.params.get("seed_everything")
    return ResultRow(
        run=name,
        point=str(trial.user_attrs.get("point", name)),
        seed=int(seed) if seed is not None else None,
        status=status,
        params=record.get("params"),
        flops=record.get("flops"),
        steps=record.get("steps"),
        epochs=record.get("epochs"),
        reached_budget=record.get("reached_budget"),
        final_train_loss=record.get("final_train_loss"),
        best_val_acc1=best_accuracy(run_dir),
        final_val_acc1=final_accuracy(run_dir),
        wall_time_s=round(float(launched.get("seconds", 0.0)), 1),
        images_per_sec=median_throughput(run_dir),
        load_avg_1min=launched.get("load_avg_1min"),
        cpu_count=launched.get("cpu_count"),
        note=note,
    )


def _flag_budgets(rows: list[ResultRow]) -> list[ResultRow]:
    """Note every finished run whose optimizer steps differ from the most common count among finished runs."""
    steps = Counter(row.steps for row in rows if row.status == "complete" and row.steps is not None)
    if len(steps) < 2:
        return rows
    usual = steps.most_common(1)[0][0]
    flagged = []
    for row in rows:
        if row.status == "complete" and row.steps is not None and row.steps != usual:
            unequal = f"unequal budget: {row.steps} steps, most runs {usual}"
            row = ResultRow(**{**asdict(row), "note": "; ".join(filter(None, [unequal, row.note]))})
        flagged.append(row)
    return flagged


def point_summaries(rows: list[ResultRow]) -> list[PointSummary]:
    """Runs grouped by grid point (the seeds of one point), in the order the points first appear."""
    points: dict[str, list[ResultRow]] = {}
    for row in rows:
        points.setdefault(row.point, []).append(row)
    return [PointSummary(point, runs) for point, runs in points.items()]


def budget_line(rows: list[ResultRow]) -> str:
    finished = [row for row in rows if row.status == "complete"]
    steps = sorted({row.steps for row in finished if row.steps is not None})
    epochs = sorted({row.epochs for row in finished if row.epochs is not None})
    short = [row.run for row in finished if row.reached_budget is False]
    if not steps:
        return "Budget: no finished run has a record of its training (runs from before ablate wrote ablate_run.json)."
    if len(steps) == 1:
        line = f"Budget: every finished run trained {steps[0]} optimizer steps ({', '.join(map(str, epochs))} epochs)."
    else:
        line = (
            f"**Unequal budgets**: the finished runs trained {steps[0]} to {steps[-1]} optimizer steps, so this "
            "table compares training lengths as much as the variants (see the note column)."
        )
    if short:
        line += f" Stopped short of the budget: {', '.join(short)}."
    return line


def noise_lines(summaries: list[PointSummary]) -> list[str]:
    """The points ranked by mean final val top-1, each gap said to be within noise when smaller than the spread."""
    ranked = sorted(
        (s for s in summaries if s.spread("final_val_acc1").mean is not None),
        key=lambda s: -s.spread("final_val_acc1").mean,
    )
    if len(ranked) < 2:
        return []
    if all(s.spread("final_val_acc1").spread is None for s in ranked):
        return ["One run per point: there is no spread to tell differences from noise (use --seeds 2 or more)."]
    parts = [ranked[0].point]
    for upper, lower in itertools.pairwise(ranked):
        a, b = upper.spread("final_val_acc1"), lower.spread("final_val_acc1")
        gap = 100 * (a.mean - b.mean)
        noise = 100 * max(a.spread or 0.0, b.spread or 0.0)
        verdict = "within noise" if gap < noise else "beyond the spread"
        parts.append(f" > {lower.point} ({gap:.2f} points lower, spread {noise:.2f}: {verdict})")
    return [
        "Ranking by mean final val top-1: " + "".join(parts) + ". A gap smaller than the larger seed-to-seed "
        "standard deviation of the two points is within noise."
    ]


def write_csv(rows: list[ResultRow], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(ResultRow)])
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)


def _cell(value: float | None, style: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else format(value * scale if scale != 1.0 else value, style) + suffix


def _distinct(values: list[int | None]) -> str:
    known = sorted({v for v in values if v is not None})
    return "/".join(map(str, known)) or "-"


def write_markdown(rows: list[ResultRow], path: Path, title: str) -> None:
    summaries = point_summaries(rows)
    lines = [f"# {title}", "", POINT_HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for summary in summaries:
        first = summary.runs[0]
        cells = [
            summary.point,
            summary.statuses(),
            _cell(first.params, ".2f", 1e-6),
            _cell(first.flops, ".3f", 1e-9),
            _distinct([r.steps for r in summary.finished]),
            _distinct([r.epochs for r in summary.finished]),
            summary.spread("final_train_loss").cell(style=".3f"),
            summary.spread("best_val_acc1").cell(100, ".2f", "%"),
            summary.spread("final_val_acc1").cell(100, ".2f", "%"),
            summary.spread("wall_time_s").cell(style=",.0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Values are the mean ± sample standard deviation over a point's finished runs (its seeds).",
        "",
        budget_line(rows),
        *noise_lines(summaries),
        "",
        RUN_HEADER,
        "|---|---|" + "---:|" * 9 + "---|",
    ]
    for row in rows:
        cells = [
            row.run,
            row.status,
            _cell(row.steps, "d"),
            _cell(row.epochs, "d"),
            _cell(row.final_train_loss, ".3f"),
            _cell(row.best_val_acc1, ".2f", 100, "%"),
            _cell(row.final_val_acc1, ".2f", 100, "%"),
            f"{row.wall_time_s:,.0f}",
            _cell(row.images_per_sec, ",.0f"),
            _cell(row.load_avg_1min, ".2f"),
            _cell(row.cpu_count, "d"),
            row.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", LOAD_CAVEAT]
    path.write_text("\n".join(lines) + "\n")


def write_plot(rows: list[ResultRow], path: Path, title: str) -> None:
    """Final val top-1 against parameters and against wall time, and the paper's Fig. 2 view: final train loss
    against final val top-1. One point per grid point, error bars = the spread over its seeds."""
    shown = [s for s in point_summaries(rows) if s.spread("final_val_acc1").mean is not None]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for axis, x_attribute, x_scale, label in (
        (axes[0], "params", 1e-6, "parameters (M)"),
        (axes[1], "wall_time_s", 1 / 60, "wall time (min)"),
        (axes[2], "final_train_loss", 1.0, "final train loss (mean of the last epoch)"),
    ):
        for summary in shown:
            x, y = summary.spread(x_attribute), summary.spread("final_val_acc1")
            if x.mean is None:
                continue
            axis.errorbar(
                x.mean * x_scale,
                100 * y.mean,
                xerr=(x.spread or 0) * x_scale,
                yerr=100 * (y.spread or 0),
                fmt="o",
                capsize=3,
            )
            axis.annotate(
                summary.point, (x.mean * x_scale, 100 * y.mean), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        axis.set_xlabel(label)
        axis.set_ylabel("final val top-1 (%)")
        axis.grid(alpha=0.3)
    axes[2].set_title("paper Fig. 2 view: at equal train loss, higher val top-1 = better generalisation", fontsize=8)
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
