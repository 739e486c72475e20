"""``pyproject.toml`` ships what a clone runs: every package folder, the configs and a console script per command.

The wheel itself is built and run in ``tests/e2e/test_wheel_install.py``; these checks read the file only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
SCRIPTS = PYPROJECT["project"]["scripts"]


def _package_folders() -> set[str]:
    """Dotted names of the folders holding an ``__init__.py`` under each top-level package of the clone."""
    tops = [path.parent for path in REPO_ROOT.glob("*/__init__.py") if path.parent.name != "tests"]
    return {".".join(init.parent.relative_to(REPO_ROOT).parts) for top in tops for init in top.rglob("__init__.py")}


def test_every_package_folder_is_in_the_wheel():
    listed = set(SETUPTOOLS["packages"]) - set(SETUPTOOLS["package-dir"])
    missing = sorted(_package_folders() - listed)
    assert not missing, f"add {', '.join(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert not listed - _package_folders(), "pyproject.toml lists a package that is not in the tree"


def test_configs_ship_inside_the_package_namespace():
    assert SETUPTOOLS["package-dir"] == {"lightning_modules.configs": "configs"}, "not a bare top-level configs module"
    assert "lightning_modules.configs" in SETUPTOOLS["packages"]
    assert "py.typed" in SETUPTOOLS["package-data"]["coatnet"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_scripts_name_functions_of_the_packages(name):
    module, function = SCRIPTS[name].split(":")
    assert module.split(".")[0] in {package.split(".")[0] for package in SETUPTOOLS["packages"]}
    assert callable(getattr(importlib.import_module(module), function))


def test_ablate_launches_the_cli_module_not_a_file_of_the_clone(tmp_path):
    # An installed wheel has no cli.py; tests/e2e/test_wheel_install.py runs `python -m lightning_modules.cli` there.
    from ablate.launch import plan_run

    argv = plan_run(("smoke.yaml",), {}, tmp_path, "grid", "run", []).argv
    assert argv[:4] == [sys.executable, "-m", "lightning_modules.cli", "fit"]


def test_no_shipped_module_imports_albumentations(tmp_path):
    # albumentations (unmaintained, and it calls PyPI on import unless NO_ALBUMENTATIONS_UPDATE is set) is only the
    # op-by-op reference of tests/unit/test_batched_augment.py; the CPU executor is OpenCV.
    probe = """
import sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "albumentations":
            seen.append(name)
        return None
sys.meta_path.insert(0, Watch())
import lightning_modules.cli, datamodules.cifar, datamodules.image_folder, datamodules.augmentation.transforms
import datamodules.augmentation.recipe, datamodules.decoding.device_decode, ablate.study
print("seen:", seen)
"""
    env = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "seen: []", proc.stdout


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _module_level_imports(package: str) -> set[str]:
    """Top-level names of the third-party modules ``package`` imports at module level (try blocks included)."""
    names = set()
    for path in (REPO_ROOT / package).rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            for statement in [node, *(node.body if isinstance(node, ast.Try) else [])]:
                if isinstance(statement, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in statement.names}
                elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
                    names.add(statement.module.split(".")[0])
    first_party = {name.split(".")[0] for name in SETUPTOOLS["packages"]}
    return {name for name in names if name not in sys.stdlib_module_names | first_party | {"__future__"}}


@pytest.mark.parametrize(
    ("package", "extras"),
    [
        ("coatnet", ()),
        ("lightning_modules", ()),
        ("datamodules", ()),
        ("bench", ()),
        ("ablate", ("ablate",)),
    ],
)
def test_module_level_imports_are_declared_dependencies(package, extras):
    # optuna and matplotlib serve ablate/ only: a plain install (no [ablate]) must train without them.
    project = PYPROJECT["project"]
    declared = {_distribution(item) for item in project["dependencies"]}
    assert not declared & {"optuna", "matplotlib"}, "optuna and matplotlib belong in the ablate extra"
    declared |= {_distribution(item) for extra in extras for item in project["optional-dependencies"][extra]}
    providers = importlib.metadata.packages_distributions()
    for module in sorted(_module_level_imports(package)):
        assert module in providers, f"{package} imports {module}, which no installed distribution provides"
        dists = {_distribution(dist) for dist in providers[module]}
        assert dists & declared, f"{package} imports {module} at module level: declare one of {sorted(dists)}"
