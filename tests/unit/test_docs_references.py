"""The README, docs/, bench/README.md, the config headers and ``python -m ablate --help`` name configs, grid files
and repository paths that exist, so a command copied from them does not fail on a moved or renamed file.

Files and folders move (configs were sorted into role folders, modules were merged); the prose that shows
commands is easy to forget. Parsing every command is too slow for the unit tier; the names are what rots.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import ablate.__main__ as ablate_main
from lightning_modules.config_files import CONFIG_DIR, ConfigNameError, find_config

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "bench" / "README.md"]
CONFIG_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))
GRIDS = CONFIG_DIR / "grids"
# a backticked path inside the repository: a top-level folder, then a file with one of these endings
TOP_FOLDERS = "coatnet|lightning_modules|datamodules|ablate|bench|tests|configs|docs"
REPO_PATH = re.compile(rf"^(?:{TOP_FOLDERS})/[\w/.-]+\.(?:py|yaml|md|sh)$")
ABLATE_CONFIG = re.compile(r"-m ablate --config ([^\s`'\")]+)")
CLI_CONFIG = re.compile(r"--config ([^\s`'\")]+?\.yaml)")


def texts() -> dict[str, str]:
    """Each document, and each config file's header comment (its commands)."""
    found = {str(path.relative_to(REPO_ROOT)): path.read_text() for path in DOCS}
    for path in CONFIG_FILES:
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        found[str(path.relative_to(REPO_ROOT))] = "\n".join(header)
    found["ablate --help"] = ablate_main.__doc__ or ""
    return found


def config_names(text: str) -> tuple[set[str], set[str]]:
    """(configs given to cli.py or bench, grid files given to python -m ablate) in ``text``."""
    grids = set(ABLATE_CONFIG.findall(text))
    configs = {name for name in CLI_CONFIG.findall(text) if name not in grids and "$" not in name and "<" not in name}
    return configs, grids


@pytest.mark.parametrize("where", sorted(texts()))
def test_every_config_a_command_names_exists(where: str) -> None:
    configs, grids = config_names(texts()[where])
    missing = []
    for name in sorted(configs):
        if name.startswith("logs/"):  # a run's saved config.yaml, written by the run it follows
            continue
        try:
            resolved = find_config(name)
        except ConfigNameError as error:
            missing.append(f"{name}: {error}")
            continue
        if not Path(resolved).is_file() and not (REPO_ROOT / resolved).is_file():
            missing.append(name)
    for name in sorted(grids):
        if not ((REPO_ROOT / name).is_file() or (GRIDS / name).is_file()):
            missing.append(f"grid {name}")
    assert not missing, f"{where} names configs that do not exist: {missing}"


@pytest.mark.parametrize("where", sorted(str(path.relative_to(REPO_ROOT)) for path in DOCS))
def test_every_repository_path_in_backticks_exists(where: str) -> None:
    text = (REPO_ROOT / where).read_text()
    paths = {token for token in re.findall(r"`([^`\s]+)`", text) if REPO_PATH.match(token)}
    missing = sorted(path for path in paths if "*" not in path and "<" not in path and not (REPO_ROOT / path).exists())
    assert not missing, f"{where} names files that do not exist: {missing}"


def test_the_checks_see_a_moved_config_and_a_missing_grid() -> None:
    """The two checks above can fail: an old path and an unknown grid are caught."""
    text = "python cli.py fit --config ablations/layout_ccct.yaml\npython -m ablate --config lr_search.yaml"
    configs, grids = config_names(text)
    assert configs == {"ablations/layout_ccct.yaml"} and grids == {"lr_search.yaml"}
    with pytest.raises(ConfigNameError, match="moved"):
        find_config("ablations/layout_ccct.yaml")
    assert not (GRIDS / "lr_search.yaml").exists()
