"""The grid file: which recipe an ablation trains and what it varies.

    name: layouts                     # optional; the file name without .yaml by default
    base: [cifar10_quick.yaml]        # config files for every run, as cli.py's --config takes them
    budget: {max_epochs: 4}           # every run's training length: max_epochs and/or max_steps (optional),
                                      # and max_time only if a wall-clock limit is wanted (runs it cuts are flagged)
    seeds: 2                          # each point trained with seed_everything 0 and 1 (optional; --seeds N)
    fixed: {model.warmup_steps: 100}  # dotted cli.py keys set in every run (optional)
    variants:                         # named runs, each a set of dotted keys (optional)
      C-C-T-T: {model.model_overrides.layout: CCTT}
    axes:                             # key: [values], crossed with each other and the variants (optional)
      model.optimizer.init_args.lr: [0.001, 0.003]
    search:                           # ranges for --sampler tpe (optional)
      model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}

A grid point is one variant (if any) and one value of each axis; its run name is the variant name and
``leaf=value`` of each axis (and ``seed=K`` with several seeds), so it names the same run folder on every
machine and every restart. Names must stay inside the log folder: a grid or variant name such as ``..``
is refused here, before anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import get_loader

from lightning_modules.config_files import ConfigNameError, find_config

TOP_LEVEL_KEYS = ("name", "base", "budget", "seeds", "fixed", "variants", "axes", "search")
BUDGET_KEYS = ("max_epochs", "max_steps", "max_time")
VARIANT_PARAM = "variant"
SEED_PARAM = "seed_everything"  # cli.py's own key, so a seed is one more setting of the run
GRID_SCALARS = (str, int, float, bool, type(None))
SEARCH_TYPES = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}
SEARCH_OPTIONAL = {"float": ("log", "step"), "int": ("log", "step"), "categorical": ()}
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._=+-]+")
FOLDER_NAME = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")  # no separators, and no leading dot (., .., hidden)


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
    budget: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()  # empty: one run per point, with the base config's seed

    def with_seeds(self, count: int) -> GridSpec:
        """The same grid with every point trained ``count`` times, with seeds 0 .. count-1 (1: the base's seed)."""
        return replace(self, seeds=tuple(range(count)) if count > 1 else ())

    def grid_space(self) -> dict[str, list[Any]]:
        """Optuna GridSampler's search space: the variant names (a categorical), every axis, then the seeds."""
        space = {VARIANT_PARAM: list(self.variants)} if self.variants else {}
        seeds = {SEED_PARAM: list(self.seeds)} if self.seeds else {}
        return {**space, **self.axes, **seeds}

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid_space().values())

    def settings_of(self, params: dict[str, Any]) -> dict[str, Any]:
        """The dotted cli.py keys of one grid point or TPE trial: the budget, ``fixed``, the variant, the values."""
        settings = {f"trainer.{key}": value for key, value in self.budget.items()}
        settings.update(self.fixed)
        settings.update(self.variants.get(params.get(VARIANT_PARAM), {}))
        settings.update({key: value for key, value in params.items() if key != VARIANT_PARAM})
        return settings

    def point_name(self, params: dict[str, Any]) -> str:
        """A folder-safe name for a grid point: the variant, then ``leaf=value`` per axis (seeds left out)."""
        leaves = [key.rsplit(".", 1)[-1] for key in self.axes]
        use_full = len(set(leaves)) < len(leaves)
        parts = [str(params[VARIANT_PARAM])] if VARIANT_PARAM in params else []
        parts += [f"{key if use_full else leaf}={params[key]}" for key, leaf in zip(self.axes, leaves)]
        return UNSAFE_NAME_CHARACTERS.sub("-", "_".join(parts)) or "run"

    def run_name(self, params: dict[str, Any]) -> str:
        """The run folder of one grid point and seed: the point's name, then ``_seed=K`` with several seeds."""
        name = self.point_name(params)
        return f"{name}_seed={params[SEED_PARAM]}" if self.seeds and SEED_PARAM in params else name


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
    name = _folder_name(path, "name", str(data.get("name") or path.stem))
    base = _base_configs(path, data.get("base"), config_dir)
    budget = _budget(path, data.get("budget") or {})
    seeds = tuple(range(_seed_count(path, data.get("seeds", 1))))
    fixed = _dotted_mapping(path, "fixed", data.get("fixed") or {})
    variants = _variants(path, data.get("variants") or {})
    axes = _axes(path, data.get("axes") or {})
    search = tuple(
        _search_range(path, key, spec) for key, spec in _mapping(path, "search", data.get("search") or {}).items()
    )
    if not (variants or axes or search):
        raise GridFileError(f"{path} varies nothing: add variants:, axes: (grid) or search: (--sampler tpe)")
    if SEED_PARAM in axes and len(seeds) > 1:
        raise GridFileError(f"{path}: seeds: and an axis {SEED_PARAM} both set the seed; keep one of them")
    return GridSpec(name, path, base, fixed, variants, axes, search, budget, seeds if len(seeds) > 1 else ())


def _folder_name(path: Path, key: str, name: str) -> str:
    """A name that becomes a folder under --log-dir: one plain component, so nothing is written outside it.
    Variant names go through ``point_name``'s character replacement first (``a b`` is the folder ``a-b``)."""
    folder = UNSAFE_NAME_CHARACTERS.sub("-", name) if key == "variant" else name
    if not FOLDER_NAME.fullmatch(folder):
        raise GridFileError(
            f"{path}: {key} {name!r} is not a folder name; use letters, digits and - _ . = + (not starting with a dot)"
        )
    return name


def _budget(path: Path, budget: Any) -> dict[str, Any]:
    """The Trainer's own limits, the same for every run: max_epochs and/or max_steps, max_time only if asked for."""
    if not isinstance(budget, dict) or set(budget) - set(BUDGET_KEYS):
        raise GridFileError(f"{path}: budget takes {', '.join(BUDGET_KEYS)}, e.g. budget: {{max_epochs: 4}}")
    for key in ("max_epochs", "max_steps"):
        value = budget.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise GridFileError(f"{path}: budget {key} must be a whole number >= 1, got {value!r}")
    return dict(budget)


def _seed_count(path: Path, seeds: Any) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise GridFileError(f"{path}: seeds must be a whole number >= 1 (runs per grid point), got {seeds!r}")
    return seeds


def _mapping(path: Path, section: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GridFileError(f"{path}: {section} must be a mapping of dotted cli.py keys, e.g. model.lr: 0.001")
    return value


def _dotted_mapping(path: Path, section: str, value: Any) -> dict[str, Any]:
    mapping = _mapping(path, section, value)
    for key in mapping:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise GridFileError(
                f"{path}: {section} key {key!r} is not a dotted cli.py key such as model.optimizer.init_args.lr"
            )
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
    for name in mapping:
        _folder_name(path, "variant", str(name))
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
        raise GridFileError(
            f"{path}: search {key} ({kind}) takes {allowed}; "
            f"{'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(extra)}"
        )
    _check_range(path, key, kind, options)
    return SearchRange(key, kind, options)


def _check_range(path: Path, key: str, kind: str, options: dict[str, Any]) -> None:
    """What Optuna would refuse with a traceback mid-study, refused now in one line naming the key."""
    where = f"{path}: search {key}"
    if kind == "categorical":
        choices = options["choices"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, GRID_SCALARS) for c in choices):
            raise GridFileError(f"{where}: choices must be a non-empty list of plain values, e.g. [0.0, 0.1]")
        return
    number = int if kind == "int" else (int, float)
    for name in ("low", "high", "step"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, number)):
            wanted = "a whole number" if kind == "int" else "a number"
            raise GridFileError(f"{where}: {name} must be {wanted}, got {value!r}")
    low, high = options["low"], options["high"]
    if low > high:
        raise GridFileError(f"{where}: low ({low}) is above high ({high}); swap them")
    if options.get("log") and low <= 0:
        raise GridFileError(f"{where}: log: true needs low > 0 (got {low}); raise low or drop log")
    if options.get("log") and options.get("step") is not None:
        raise GridFileError(f"{where}: log: true and step cannot be combined; drop one of them")
    if options.get("step") is not None and options["step"] <= 0:
        raise GridFileError(f"{where}: step must be > 0, got {options['step']}")
