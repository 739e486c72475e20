"""``python -m ablate`` end to end on two-variant grids of tiny synthetic fits.

The first invocation may train one run (``--n-trials 1``); the rerun trains only the missing one and
writes the table and the plot for both, with the numbers read from the runs' own folders. Every run
trains the grid's budget, whatever wall-clock limit its base config has; a run whose loss diverges is
tabulated as diverged while the other runs train.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, subprocess_env

GRID = """
name: tiny
base: [smoke.yaml, {wallclock}]
budget: {{max_epochs: 1}}
fixed:
  trainer.limit_train_batches: 4
  trainer.limit_val_batches: 1
  trainer.log_every_n_steps: 1
  trainer.enable_progress_bar: false
  trainer.enable_model_summary: false
  data.init_args.train_size: 128
  data.init_args.val_size: 32
  data.init_args.batch_size: 32
  throughput.window: 1
  pictures.train_batch: false
  pictures.val_predictions: false
  pictures.attention_maps: false
  pictures.rel_pos_bias: false
variants:
{variants}
"""
LAYOUTS = """  C-C-T-T: {model.model_overrides.layout: CCTT}
  C-C-C-C: {model.model_overrides.layout: CCCC}"""
# No time at all: a run that inherited this limit would stop after its first step.
WALLCLOCK = 'trainer:\n  max_time: "00:00:00:00"\n'


def write_grid(tmp_path: Path, variants: str) -> None:
    (tmp_path / "wallclock.yaml").write_text(WALLCLOCK)
    (tmp_path / "tiny.yaml").write_text(GRID.format(wallclock=tmp_path / "wallclock.yaml", variants=variants))


def ablate_command(tmp_path: Path, *args: str) -> list[str]:
    """``python -m ablate`` over the grid ``write_grid`` wrote, logging under ``tmp_path/logs``."""
    return [
        sys.executable,
        "-m",
        "ablate",
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--log-dir",
        str(tmp_path / "logs"),
        *args,
    ]


def ablate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = ablate_command(tmp_path, *args)
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def trained(proc: subprocess.CompletedProcess) -> list[str]:
    """Run names of the ``ablate: [k/N] training NAME in FOLDER`` lines."""
    lines = proc.stdout.splitlines()
    return [line.split()[3] for line in lines if line.startswith("ablate: [") and " training " in line]


@pytest.mark.slow
def test_a_stopped_grid_trains_only_the_missing_run_then_writes_table_and_plot(tmp_path: Path) -> None:
    write_grid(tmp_path, LAYOUTS)
    first = ablate(tmp_path, "--n-trials", "1")
    trained_first = trained(first)
    assert len(trained_first) == 1
    grid_dir = tmp_path / "logs" / "tiny"
    assert (grid_dir / trained_first[0] / "checkpoints" / "last.ckpt").is_file()

    second = ablate(tmp_path)
    trained_second = trained(second)
    assert trained_second == list({"C-C-T-T", "C-C-C-C"} - set(trained_first))

    rows = {row["run"]: row for row in csv.DictReader((grid_dir / "results.csv").open())}
    assert set(rows) == {"C-C-T-T", "C-C-C-C"}
    assert int(rows["C-C-C-C"]["params"]) < int(
        rows["C-C-T-T"]["params"]
    )  # MBConv S3/S4 are smaller than Transformer ones
    for row in rows.values():
        assert row["status"] == "complete" and int(row["flops"]) > 0
        assert float(row["images_per_sec"]) > 0 and 0.0 <= float(row["best_val_acc1"]) <= 1.0
        assert float(row["wall_time_s"]) > 0
        assert (row["steps"], row["epochs"], row["reached_budget"]) == ("4", "1", "True")  # max_time was not inherited
        assert float(row["final_train_loss"]) > 0 and row["final_val_acc1"] == row["best_val_acc1"]
        assert float(row["load_avg_1min"]) >= 0 and int(row["cpu_count"]) >= 1
    markdown = (grid_dir / "results.md").read_text()
    assert "| C-C-C-C | complete |" in markdown and "best val top-1" in markdown
    assert "Budget: every finished run trained 4 optimizer steps (1 epochs)." in markdown
    assert (grid_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_diverging_point_is_tabulated_as_diverged_while_the_others_train(tmp_path: Path) -> None:
    write_grid(
        tmp_path,
        """  ok: {}
  nan:
    model.optimizer.init_args.lr: 1.0e+30
    model.warmup_steps: 0
    trainer.gradient_clip_val: null
    nan_guard.check_every_n_steps: 1""",
    )
    first = ablate(tmp_path)  # exit 0: a diverged run is a result, not a failure
    assert sorted(trained(first)) == ["nan", "ok"]
    assert "nan diverged" in first.stdout and "fix the grid file" not in first.stderr
    grid_dir = tmp_path / "logs" / "tiny"
    rows = {row["run"]: row for row in csv.DictReader((grid_dir / "results.csv").open())}
    assert rows["ok"]["status"] == "complete" and rows["ok"]["steps"] == "4"
    assert rows["nan"]["status"] == "diverged" and "diverged" in rows["nan"]["note"]
    assert "| nan | diverged |" in (grid_dir / "results.md").read_text()

    rerun = ablate(tmp_path)
    assert trained(rerun) == [] and "every run of tiny is finished" in rerun.stdout


@pytest.mark.slow
def test_two_processes_sharing_a_journal_train_each_point_once_and_tabulate_both(tmp_path: Path) -> None:
    write_grid(tmp_path, LAYOUTS)
    command = ablate_command(tmp_path)
    procs = [
        subprocess.Popen(
            command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
        assert "fix the grid file" not in err
    trained_by_both = [name for out, _ in outputs for name in trained(subprocess.CompletedProcess([], 0, out, ""))]
    assert sorted(trained_by_both) == ["C-C-C-C", "C-C-T-T"]  # no point trained twice

    table = ablate(tmp_path)
    assert trained(table) == []
    rows = {row["run"]: row["status"] for row in csv.DictReader((tmp_path / "logs" / "tiny" / "results.csv").open())}
    assert rows == {"C-C-C-C": "complete", "C-C-T-T": "complete"}
