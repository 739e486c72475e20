"""Grid files: what a grid point means, and one clear error line for each kind of bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from ablate.__main__ import main
from ablate.grid_file import GridFileError, load_grid_file
from ablate.launch import plan_run

CONFIG_DIR = REPO_ROOT / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_layouts_grid_names_the_paper_layouts_and_vit_rel() -> None:
    spec = load_grid_file(CONFIG_DIR / "grids" / "layouts.yaml", CONFIG_DIR)
    assert spec.grid_space() == {"variant": ["C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T", "ViT-REL"]}
    assert spec.settings_of({"variant": "C-C-C-T"}) == {"trainer.max_epochs": 4, "model.model_overrides.layout": "CCCT"}
    assert spec.settings_of({"variant": "ViT-REL"})["model.model_overrides.stem.patch_size"] == 8
    assert spec.run_name({"variant": "ViT-REL"}) == "ViT-REL"


def test_axes_cross_with_variants_and_name_runs_by_leaf(tmp_path: Path) -> None:
    spec = load_grid_file(
        write(
            tmp_path,
            """
base: smoke.yaml
fixed: {trainer.max_epochs: 1}
variants: {small: {model.model_name: coatnet_nano}}
axes:
  model.optimizer.init_args.lr: [1.0e-3, 3.0e-3]
  model.model_overrides.transformer.attention: [pre_softmax, post_softmax]
""",
        ),
        CONFIG_DIR,
    )
    point = {
        "variant": "small",
        "model.optimizer.init_args.lr": 1e-3,
        "model.model_overrides.transformer.attention": "post_softmax",
    }
    assert spec.name == "grid" and spec.base == ("smoke.yaml",)
    assert spec.run_name(point) == "small_lr=0.001_attention=post_softmax"
    assert spec.settings_of(point) == {
        "trainer.max_epochs": 1,
        "model.model_name": "coatnet_nano",
        "model.optimizer.init_args.lr": 1e-3,
        "model.model_overrides.transformer.attention": "post_softmax",
    }


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("base: smoke.yaml\naxis: {model.lr: [1]}\n", "unknown key axis"),
        ("base: no_such.yaml\naxes: {model.lr: [1]}\n", "base config no_such.yaml not found"),
        ("base: smoke.yaml\naxes: {model.lr: 0.1}\n", "axis model.lr must be a non-empty list"),
        ("base: smoke.yaml\naxes: {model.x: [[1, 2]]}\n", "name such settings under variants"),
        ("base: smoke.yaml\nsearch: {model.lr: {type: normal}}\n", "needs type: float, int or categorical"),
        ("base: smoke.yaml\nsearch: {model.lr: {type: float, low: 0.1}}\n", "missing high"),
        ("base: smoke.yaml\n", "varies nothing"),
        ("name: ../..\nbase: smoke.yaml\naxes: {model.lr: [1]}\n", "name '../..' is not a folder name"),
        ("name: .hidden\nbase: smoke.yaml\naxes: {model.lr: [1]}\n", "name '.hidden' is not a folder name"),
        ("base: smoke.yaml\nvariants: {..: {model.lr: 1}}\n", "variant '..' is not a folder name"),
        ("base: smoke.yaml\nvariants: {../../x: {model.lr: 1}}\n", "variant '../../x' is not a folder name"),
        ("base: smoke.yaml\nsearch: {model.lr: {type: float, low: 0.1, high: 0.01}}\n", "low (0.1) is above high"),
        (
            "base: smoke.yaml\nsearch: {model.lr: {type: float, low: 0, high: 0.01, log: true}}\n",
            "log: true needs low > 0",
        ),
        (
            "base: smoke.yaml\nsearch: {model.n: {type: int, low: 1, high: 9, log: true, step: 2}}\n",
            "cannot be combined",
        ),
        ("base: smoke.yaml\nsearch: {model.n: {type: int, low: 1.5, high: 9}}\n", "low must be a whole number"),
        ("base: smoke.yaml\nsearch: {model.x: {type: categorical, choices: []}}\n", "choices must be a non-empty list"),
        ("base: smoke.yaml\nbudget: {max_time: 1, epochs: 3}\naxes: {model.lr: [1]}\n", "budget takes max_epochs"),
        (
            "base: smoke.yaml\nbudget: {max_epochs: 0}\naxes: {model.lr: [1]}\n",
            "max_epochs must be a whole number >= 1",
        ),
        ("base: smoke.yaml\nseeds: 0\naxes: {model.lr: [1]}\n", "seeds must be a whole number >= 1"),
    ],
)
def test_bad_grid_files_name_the_problem(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(GridFileError, match=re.escape(named)):
        load_grid_file(write(tmp_path, text), CONFIG_DIR)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--config", "no_such_grid.yaml"], "grid file no_such_grid.yaml not found"),
        (["--config", "layouts.yaml", "--sampler", "random"], "invalid choice: 'random'"),
        (["--config", "layouts.yaml", "--sampler", "tpe", "--n-trials", "2"], "no search: ranges for --sampler tpe"),
        (["--config", "quick_search.yaml", "--sampler", "tpe"], "--sampler tpe needs --n-trials"),
    ],
)
def test_command_line_errors_are_one_line_and_exit_2(
    args: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["ablate", *args, "--log-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main())
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2
    assert named in error and error.startswith("error:") and "\n" not in error


def test_seeds_and_budget_make_runs_of_equal_length_with_one_folder_per_seed(tmp_path: Path) -> None:
    spec = load_grid_file(
        write(
            tmp_path,
            """
base: smoke.yaml
budget: {max_epochs: 3}
seeds: 2
variants: {C-C-T-T: {model.model_overrides.layout: CCTT}, C-C-C-C: {model.model_overrides.layout: CCCC}}
""",
        ),
        CONFIG_DIR,
    )
    assert spec.grid_space() == {"variant": ["C-C-T-T", "C-C-C-C"], "seed_everything": [0, 1]}
    assert spec.grid_size() == 4
    point = {"variant": "C-C-C-C", "seed_everything": 1}
    assert spec.run_name(point) == "C-C-C-C_seed=1" and spec.point_name(point) == "C-C-C-C"
    assert spec.settings_of(point) == {
        "trainer.max_epochs": 3,
        "model.model_overrides.layout": "CCCC",
        "seed_everything": 1,
    }
    assert spec.with_seeds(1).grid_space() == {"variant": ["C-C-T-T", "C-C-C-C"]}
    assert spec.with_seeds(3).grid_space()["seed_everything"] == [0, 1, 2]


def test_a_wall_clock_limit_of_the_base_config_is_dropped_unless_the_grid_sets_one(tmp_path: Path) -> None:
    inherited = plan_run(("cifar10_quick.yaml",), {"trainer.max_epochs": 2}, tmp_path, "grid", "run", [])
    assert "--trainer.max_time=null" in inherited.argv
    assert inherited.argv.index("--trainer.max_time=null") < inherited.argv.index("--trainer.max_epochs=2")
    assert "--trainer.callbacks+=ablate.run_record.RunRecord" in inherited.argv  # the record the table reads
    asked = plan_run(("cifar10_quick.yaml",), {"trainer.max_time": "00:00:10:00"}, tmp_path, "grid", "run", [])
    assert "--trainer.max_time=null" not in asked.argv and "--trainer.max_time=00:00:10:00" in asked.argv
    layouts = load_grid_file(CONFIG_DIR / "grids" / "layouts.yaml", CONFIG_DIR)
    assert layouts.settings_of({"variant": "C-C-T-T"})["trainer.max_epochs"] == 4


def test_a_journal_with_a_garbage_line_is_one_error_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "layouts" / "optuna.journal"
    journal.parent.mkdir()
    journal.write_text('{"op_code": 0, "worker_id": "w", "study_name": "x", "directions": [1]}\nnot json{\n')
    monkeypatch.setattr("sys.argv", ["ablate", "--config", "layouts.yaml", "--log-dir", str(tmp_path)])
    assert main() == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {journal}: line 2 is not an Optuna journal record") and "\n" not in error
    assert "move the file away" in error


def test_seeds_with_a_search_are_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "sys.argv",
        [
            "ablate",
            "--config",
            "quick_search.yaml",
            "--sampler",
            "tpe",
            "--n-trials",
            "1",
            "--seeds",
            "2",
            "--log-dir",
            str(tmp_path),
        ],
    )
    assert main() == 2
    assert "seeds repeat grid points" in capsys.readouterr().err


def test_without_optuna_ablate_names_the_extra_to_install() -> None:
    code = (
        "import sys, runpy; sys.modules['optuna'] = None; sys.argv = ['ablate', '--help']; "
        "runpy.run_module('ablate', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: python -m ablate needs optuna and matplotlib (optuna is not installed): pip install -e '.[ablate]'"
    )


@pytest.mark.parametrize("grid", ["layouts.yaml", "layouts_small.yaml", "attention_bias.yaml", "quick_search.yaml"])
def test_every_shipped_grid_sets_a_budget_and_no_wall_clock_limit(grid: str, tmp_path: Path) -> None:
    spec = load_grid_file(CONFIG_DIR / "grids" / grid, CONFIG_DIR)
    assert spec.budget.get("max_epochs") or spec.budget.get("max_steps")
    assert "max_time" not in spec.budget
    plan = plan_run(spec.base, spec.settings_of({}), tmp_path, spec.name, "run", [])
    assert "--trainer.max_time=null" in plan.argv


def test_the_small_layouts_grid_is_the_layouts_grid_with_two_seeds() -> None:
    layouts = load_grid_file(CONFIG_DIR / "grids" / "layouts.yaml", CONFIG_DIR)
    small = load_grid_file(CONFIG_DIR / "grids" / "layouts_small.yaml", CONFIG_DIR)
    assert small.variants == layouts.variants and small.seeds == (0, 1) and small.grid_size() == 10
