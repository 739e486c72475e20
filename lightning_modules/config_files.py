"""Config files on the command line: ``--config coatnet0.yaml`` finds ``configs/coatnet0.yaml`` from anywhere.

``configs/`` holds the recipes at its top and presets in folders by role: ``trainer/``, ``data/``, ``run/``,
``model/``, plus ``grids/`` for ``python -m ablate`` (not LightningCLI configs). A ``--config``/``-c`` value that
is not a file in the working directory is looked up in ``configs/`` (a file of that name in the working directory
wins); a bare name such as ``ddp.yaml`` is also searched in the preset folders when exactly one holds it. In a
clone ``configs/`` is the repository's folder; installed from a wheel it ships as ``lightning_modules/configs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, get_loader

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # present only in an installed wheel
CONFIG_DIR = PACKAGED_CONFIG_DIR if PACKAGED_CONFIG_DIR.is_dir() else Path(__file__).resolve().parents[1] / "configs"
GRID_FOLDER = "grids"  # python -m ablate's grid files: never a --config of the CLI


class ConfigNameError(ValueError):
    """A ``--config`` name that names no file, in one line with the fix (an old path, an ambiguous bare name)."""


def config_values(argv: list[str]) -> list[tuple[int, str]]:
    """(index in ``argv``, path) of every ``--config``/``-c`` value, in order; ``--config=PATH`` is one item."""
    found = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            found.append((i + 1, argv[i + 1]))
        elif arg.startswith("--config="):
            found.append((i, arg.split("=", 1)[1]))
    return found


def find_config(value: str, config_dir: Path = CONFIG_DIR) -> str:
    """``value``, or the file it names in ``config_dir`` where ``value`` names no file in the working directory.

    A bare name is searched in the preset folders too; raises :class:`ConfigNameError` where several folders hold
    it, where it is an ablate grid file, or where a relative path such as ``ablations/layout_ccct.yaml`` moved.
    """
    if Path(value).exists() or Path(value).is_absolute():
        return value
    candidate = config_dir / value
    if candidate.is_file():
        return str(candidate)
    found = sorted(config_dir.glob(f"*/{Path(value).name}"))
    grids = [path for path in found if path.parent.name == GRID_FOLDER]
    found = [str(path.relative_to(config_dir)) for path in found if path not in grids]
    if len(found) > 1:
        raise ConfigNameError(f"config {value} is in several folders of {config_dir}: pass one of {', '.join(found)}")
    if found and Path(value).parent == Path("."):
        return str(config_dir / found[0])
    if found:
        raise ConfigNameError(f"config {value} moved (configs/ is sorted by role): pass --config {found[0]}")
    if grids:
        raise ConfigNameError(
            f"{value} is a grid file of python -m ablate ({grids[0]}), not a config: run "
            f"python -m ablate --config {value}"
        )
    return value


def resolve_config_paths(argv: list[str], config_dir: Path = CONFIG_DIR) -> list[str]:
    """``argv`` with every ``--config``/``-c`` value passed through :func:`find_config`, for scripts (bench/) that
    read the config files themselves; the CLI finds them on its own."""
    resolved = list(argv)
    for index, value in config_values(argv):
        prefix = "--config=" if resolved[index].startswith("--config=") else ""
        resolved[index] = prefix + find_config(value, config_dir)
    return resolved


def config_file_problem(path: str) -> str | None:
    """Why the YAML file ``path`` is no config (not YAML, empty, not a mapping of keys), in one line; else None."""
    try:
        data = get_loader("yaml")(Path(path).read_text())
    except yaml.YAMLError as err:
        where = " ".join(str(err).replace(' in "<unicode string>"', "").split()).replace(" ,", ",")
        return f"config file {path} is not valid YAML: {where}"
    if data is None:
        return f"config file {path} is empty: give it keys such as trainer:, model: and data:, or leave it out"
    if not isinstance(data, dict):
        return f"config file {path} holds a {type(data).__name__}, not keys such as trainer:, model: and data:"
    return None


class ConfigFileOrName(ActionConfigFile):
    """``--config``/``-c`` that also takes the name of a file in ``configs/``: ``--config coatnet0.yaml`` works
    from any directory (a file of that name in the working directory wins; see :func:`find_config`). A file that is
    no YAML mapping, or a name that moved, is refused in one line naming it (jsonargparse would report a file
    against every way it can read a value)."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        try:
            path = find_config(values) if isinstance(values, str) else values
        except ConfigNameError as err:
            parser.error(str(err))
        if isinstance(path, str) and Path(path).is_file() and (problem := config_file_problem(path)):
            parser.error(problem)
        super().__call__(parser, cfg, path, option_string)


def read_config_file(path: str) -> dict[str, Any]:
    """A config file as a dict, read as jsonargparse reads it; {} where it cannot be read (the parser reports that)."""
    try:
        data = get_loader("yaml")(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
