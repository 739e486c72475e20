"""The grid file: which recipe an ablation trains and what it varies.

    name: layouts                     # optional; the file name without .yaml by default
    base: [cifar10_quick.yaml]        # config files for every run, as cli.py's --config takes them
    fixed: {trainer.max_epochs: 4}    # dotted cli.py keys set in every run (optional)
    variants:                         # named runs, each a set of dotted keys (optional)
      C-C-T-T: {model.model_overrides.layout: CCTT}
    axes:                             # key: [values], crossed with each other and the variants (optional)
      model.optimizer.init_args.lr: [0.001, 0.003]
    search:                           # ranges for --sampler tpe (optional)
      model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}

A grid point is one variant (if any) and one value of each axis; its run name is the variant name and
``leaf=value`` of each axis, so it names the same run folder on every machine and every restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import get_loader

from lightning_modules.config_files import ConfigNameError, find_config

TOP_LEVEL_KEYS = ("name", "base", "fixed", "variants", "axes", "search")
VARIANT_PARAM = "variant"
GRID_SCALARS = (str, int, float, bool, type(None))
SEARCH_TYPES = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}
SEARCH_OPTIONAL = {"float": ("log", "step"), "int": ("log", "step"), "categorical": ()}
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._=+-]+")


class GridFileError(ValueError):
    """A grid file the user has to fix; the message names the problem and the fix."""


@dataclass(frozen=True)
class SearchRange:
    """One TPE dimension: ``type`` float, int or categorical with Optuna's own argument names."""

    key: str
    type: str
    options: dict[str, Any]


@dataclass(frozen=True)
class GridSpec:
    name: str
    path: Path
    base: tuple[str, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    search: tuple[SearchRange, ...] = ()

    def grid_space(self) -> dict[str, list[Any]]:
        """Optuna GridSampler's search space: the variant names (a categorical) and every axis."""
        space = {VARIANT_PARAM: list(self.variants)} if self.variants else {}
        return {**space, **self.axes}

    def settings_of(self, params: dict[str, Any]) -> dict[str, Any]:
        """The dotted cli.py keys of one grid point or TPE trial, after ``fixed``."""
        settings = dict(self.fixed)
        settings.update(self.variants.get(params.get(VARIANT_PARAM), {}))
        settings.update({key: value for key, value in params.items() if key != VARIANT_PARAM})
        return settings

    def run_name(self, params: dict[str, Any]) -> str:
        """A folder-safe name for a grid point: the variant, then ``leaf=value`` per axis."""
        leaves = [key.rsplit(".", 1)[-1] for key in self.axes]
        use_full = len(set(leaves)) < len(leaves)
        parts = [str(params[VARIANT_PARAM])] if VARIANT_PARAM in params else []
        parts += [f"{key if use_full else leaf}={params[key]}" for key, leaf in zip(self.axes, leaves)]
        return UNSAFE_NAME_CHARACTERS.sub("-", "_".join(parts)) or "run"


def load_grid_file(path: Path, config_dir: Path) -> GridSpec:
    """Read and check a grid file; every problem is a ``GridFileError``."""
    if not path.is_file():
        raise GridFileError(f"grid file {path} not found: pass an existing file, e.g. configs/grids/layouts.yaml")
    try:
        data = get_loader("yaml")(path.read_text())  # as cli.py reads YAML: 1e-4 is a number
    except yaml.YAMLError as err:
        raise GridFileError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise GridFileError(f"{path} must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise GridFileError(f"{path}: unknown key {', '.join(unknown)}; the keys are {', '.join(TOP_LEVEL_KEYS)}")
    base = _base_configs(path, data.get("base"), config_dir)
    fixed = _dotted_mapping(path, "fixed", data.get("fixed") or {})
    variants = _variants(path, data.get("variants") or {})
    axes = _axes(path, data.get("axes") or {})
    search = tuple(_search_range(path, key, spec) for key, spec in _mapping(path, "search", data.get("search") or {}).items())
    if not (variants or axes or search):
        raise GridFileError(f"{path} varies nothing: add variants:, axes: (grid) or search: (--sampler tpe)")
    return GridSpec(str(data.get("name") or path.stem), path, base, fixed, variants, axes, search)


def _mapping(path: Path, section: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GridFileError(f"{path}: {section} must be a mapping of dotted cli.py keys, e.g. model.lr: 0.001")
    return value


def _dotted_mapping(path: Path, section: str, value: Any) -> dict[str, Any]:
    mapping = _mapping(path, section, value)
    for key in mapping:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise GridFileError(f"{path}: {section} key {key!r} is not a dotted cli.py key such as model.optimizer.init_args.lr")
    return dict(mapping)


def _base_configs(path: Path, base: Any, config_dir: Path) -> tuple[str, ...]:
    """Config files as given (cli.py resolves bare names in configs/); each must exist now, not mid-grid."""
    files = [base] if isinstance(base, str) else base
    if not files or not isinstance(files, list) or not all(isinstance(item, str) for item in files):
        raise GridFileError(f"{path}: base must name one or more config files, e.g. base: [cifar10_quick.yaml]")
    for item in files:
        try:
            found = find_config(item, config_dir)  # as the CLI will: bare preset names are searched in the folders
        except ConfigNameError as err:
            raise GridFileError(f"{path}: base {err}") from None
        if not Path(found).is_file():
            raise GridFileError(f"{path}: base config {item} not found here or in {config_dir}; fix the name")
    return tuple(files)


def _variants(path: Path, variants: Any) -> dict[str, dict[str, Any]]:
    mapping = _mapping(path, "variants", variants)
    return {str(name): _dotted_mapping(path, f"variant {name}", keys or {}) for name, keys in mapping.items()}


def _axes(path: Path, axes: Any) -> dict[str, list[Any]]:
    mapping = _dotted_mapping(path, "axes", axes)
    for key, values in mapping.items():
        if not isinstance(values, list) or not values:
            raise GridFileError(f"{path}: axis {key} must be a non-empty list of values, e.g. {key}: [a, b]")
        if not all(isinstance(value, GRID_SCALARS) for value in values):
            raise GridFileError(f"{path}: axis {key} holds a list or mapping; name such settings under variants:")
        if key == VARIANT_PARAM:
            raise GridFileError(f"{path}: '{VARIANT_PARAM}' is the name of the variants axis; use variants: for it")
    return mapping


def _search_range(path: Path, key: str, spec: Any) -> SearchRange:
    _dotted_mapping(path, "search", {key: None})
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in SEARCH_TYPES:
        raise GridFileError(f"{path}: search {key} needs type: float, int or categorical (got {kind!r})")
    options = {k: v for k, v in spec.items() if k != "type"}
    missing = [k for k in SEARCH_TYPES[kind] if k not in options]
    extra = sorted(set(options) - set(SEARCH_TYPES[kind]) - set(SEARCH_OPTIONAL[kind]))
    if missing or extra:
        allowed = ", ".join(SEARCH_TYPES[kind] + SEARCH_OPTIONAL[kind])
        raise GridFileError(f"{path}: search {key} ({kind}) takes {allowed}; {'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(extra)}")
    return SearchRange(key, kind, options)
