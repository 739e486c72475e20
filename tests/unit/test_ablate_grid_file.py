"""Grid files: what a grid point means, and one clear error line for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT

from ablate.__main__ import main
from ablate.grid_file import GridFileError, load_grid_file

CONFIG_DIR = REPO_ROOT / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_layouts_grid_names_the_paper_layouts_and_vit_rel() -> None:
    spec = load_grid_file(CONFIG_DIR / "grids" / "layouts.yaml", CONFIG_DIR)
    assert spec.grid_space() == {"variant": ["C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T", "ViT-REL"]}
    assert spec.settings_of({"variant": "C-C-C-T"}) == {"model.model_overrides.layout": "CCCT"}
    assert spec.settings_of({"variant": "ViT-REL"})["model.model_overrides.stem.patch_size"] == 8
    assert spec.run_name({"variant": "ViT-REL"}) == "ViT-REL"


def test_axes_cross_with_variants_and_name_runs_by_leaf(tmp_path: Path) -> None:
    spec = load_grid_file(write(tmp_path, """
base: smoke.yaml
fixed: {trainer.max_epochs: 1}
variants: {small: {model.model_name: coatnet_nano}}
axes:
  model.optimizer.init_args.lr: [1.0e-3, 3.0e-3]
  model.model_overrides.transformer.attention: [pre_softmax, post_softmax]
"""), CONFIG_DIR)
    point = {"variant": "small", "model.optimizer.init_args.lr": 1e-3,
             "model.model_overrides.transformer.attention": "post_softmax"}
    assert spec.name == "grid" and spec.base == ("smoke.yaml",)
    assert spec.run_name(point) == "small_lr=0.001_attention=post_softmax"
    assert spec.settings_of(point) == {"trainer.max_epochs": 1, "model.model_name": "coatnet_nano",
                                       "model.optimizer.init_args.lr": 1e-3,
                                       "model.model_overrides.transformer.attention": "post_softmax"}


@pytest.mark.parametrize(("text", "named"), [
    ("base: smoke.yaml\naxis: {model.lr: [1]}\n", "unknown key axis"),
    ("base: no_such.yaml\naxes: {model.lr: [1]}\n", "base config no_such.yaml not found"),
    ("base: smoke.yaml\naxes: {model.lr: 0.1}\n", "axis model.lr must be a non-empty list"),
    ("base: smoke.yaml\naxes: {model.x: [[1, 2]]}\n", "name such settings under variants"),
    ("base: smoke.yaml\nsearch: {model.lr: {type: normal}}\n", "needs type: float, int or categorical"),
    ("base: smoke.yaml\nsearch: {model.lr: {type: float, low: 0.1}}\n", "missing high"),
    ("base: smoke.yaml\n", "varies nothing"),
])
def test_bad_grid_files_name_the_problem(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(GridFileError, match=named):
        load_grid_file(write(tmp_path, text), CONFIG_DIR)


@pytest.mark.parametrize(("args", "named"), [
    (["--config", "no_such_grid.yaml"], "grid file no_such_grid.yaml not found"),
    (["--config", "layouts.yaml", "--sampler", "random"], "invalid choice: 'random'"),
    (["--config", "layouts.yaml", "--sampler", "tpe", "--n-trials", "2"], "no search: ranges for --sampler tpe"),
    (["--config", "quick_search.yaml", "--sampler", "tpe"], "--sampler tpe needs --n-trials"),
])
def test_command_line_errors_are_one_line_and_exit_2(
    args: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["ablate", *args, "--log-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main())
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2
    assert named in error and error.startswith("error:") and "\n" not in error
