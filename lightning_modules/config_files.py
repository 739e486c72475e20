"""Config files on the command line: ``--config coatnet0.yaml`` finds ``configs/coatnet0.yaml`` from anywhere.

A ``--config``/``-c`` value that is not a file in the working directory is looked up in the ``configs/``
folder of the repository (a file of that name in the working directory wins).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, get_loader

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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
    """``value``, or its copy in ``config_dir`` where ``value`` names no file in the working directory."""
    candidate = config_dir / value
    return str(candidate) if not Path(value).exists() and candidate.is_file() else value


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
    from any directory (a file of that name in the working directory wins). A file that is no YAML mapping is
    refused in one line naming it (jsonargparse would report it against every way it can read a value)."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        path = find_config(values) if isinstance(values, str) else values
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
