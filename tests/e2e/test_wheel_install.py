"""``pip install .`` (not ``-e``): the wheel holds the code and the configs, and its console scripts run.

The wheel is built from a copy of the shipped sources (the clone stays clean), installed with ``--target`` into
a temporary folder, and run from an empty directory with only that folder on ``PYTHONPATH``: the dependencies
come from this interpreter's site-packages, the project from the wheel. The test checks that the clone (or an
editable install of it) is not what gets imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

pytestmark = pytest.mark.slow
SETUPTOOLS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
WHEEL_SOURCES = ["pyproject.toml", "README.md", "configs", *{name.split(".")[0] for name in SETUPTOOLS["packages"]}]
SHORT_FIT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel from a copy of the sources and install it, without dependencies, into a target folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), str(source)], root
    )
    wheel = next((root / "dist").glob("coatnet_lightning-*.whl"))
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(root / "site"), str(wheel)], root)
    workdir = root / "empty"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PYTHONPATH=str(root / "site"),
        PYTHONNOUSERSITE="1",
        NO_ALBUMENTATIONS_UPDATE="1",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    return {"wheel": wheel, "site": root / "site", "bin": root / "site" / "bin", "cwd": workdir, "env": env}


def test_wheel_holds_every_config_and_the_typed_marker(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    configs = {
        f"lightning_modules/configs/{path.relative_to(REPO_ROOT / 'configs')}"
        for path in (REPO_ROOT / "configs").rglob("*.yaml")
    }
    assert configs <= names, sorted(configs - names)
    assert "lightning_modules/cli.py" in names and not any(name.startswith(("tests/", "configs/")) for name in names)
    if (REPO_ROOT / "coatnet" / "py.typed").is_file():
        assert "coatnet/py.typed" in names


def test_installed_packages_are_the_wheels_not_the_clone(installed):
    probe = (
        "import coatnet, datamodules, lightning_modules.cli as cli, ablate; "
        "print(coatnet.__file__, datamodules.__file__, cli.__file__, ablate.__file__, cli.CONFIG_DIR, sep='\\n')"
    )
    paths = _run([sys.executable, "-c", probe], installed["cwd"], installed["env"]).split()
    site = installed["site"].resolve()
    assert len(paths) == 5 and all(Path(path).resolve().is_relative_to(site) for path in paths), paths
    assert Path(paths[-1]).resolve() == site / "lightning_modules" / "configs"


def test_console_script_runs_a_smoke_fit_with_bare_config_names(installed):
    logs = installed["cwd"] / "tb"
    script = installed["bin"] / "coatnet-lightning"
    _run(
        [str(script), "fit", "--config", "smoke.yaml", f"--trainer.logger.init_args.save_dir={logs}", *SHORT_FIT],
        installed["cwd"],
        installed["env"],
    )
    assert (logs / "smoke" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in installed["cwd"].iterdir()) == ["tb"], "nothing else is written to the cwd"
    # A preset from a role folder by its bare name, checked by parsing alone.
    printed = _run(
        [str(script), "fit", "--config", "coatnet0.yaml", "--config", "ema.yaml", "--print_config"],
        installed["cwd"],
        installed["env"],
    )
    assert "EMAWeightAveraging" in printed and "coatnet_0" in printed


def test_other_console_scripts_start(installed):
    commands = {
        "list": [str(installed["bin"] / "coatnet"), "list"],
        "ablate": [str(installed["bin"] / "coatnet-ablate"), "--help"],
        # ablate starts each run as `python -m lightning_modules.cli fit ...`
        "module cli": [sys.executable, "-m", "lightning_modules.cli", "fit", "--help"],
    }
    with ThreadPoolExecutor(len(commands)) as pool:  # each spends seconds importing torch: start them together
        outputs = dict(
            zip(commands, pool.map(lambda cmd: _run(cmd, installed["cwd"], installed["env"]), commands.values()))
        )
    assert "coatnet_0" in outputs["list"]
    assert "grid file" in outputs["ablate"]
    assert "--config CONFIG" in outputs["module cli"]
