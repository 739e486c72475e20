"""Each model-config field declares its range and role once; the checks and the lists built on them follow it."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args, get_type_hints

import pytest

from coatnet import get_config
from coatnet.config import REGULARISATION, CoAtNetConfig, setting
from coatnet.config_io import field_paths, regularisation_fields
from lightning_modules.model_overrides import CoAtNetOverrides
from lightning_modules.resilience.network_match import TRAINING_ONLY_FIELDS

_OUTSIDE = {"> 0": 0, ">= 0": -1, "[0, 1]": 1.5, "[0, 1)": 1}  # the nearest value each range refuses


def _hint(path: str, root: type = CoAtNetConfig) -> Any:
    *sections, name = path.split(".")
    for section in sections:
        root = get_type_hints(root)[section]
    return get_type_hints(root)[name]


def _override(path: str, value: Any) -> dict[str, Any]:
    *sections, name = path.split(".")
    tree: dict[str, Any] = {name: value}
    for section in reversed(sections):
        tree = {section: tree}
    return tree


@pytest.mark.parametrize(("path", "allowed"), sorted(field_paths("range").items()))
def test_every_declared_range_is_checked_when_the_config_is_built(path, allowed):
    default = get_config("coatnet_nano")
    for section in path.split("."):
        default = getattr(default, section)
    bad: Any = _OUTSIDE[allowed]
    bad = float(bad) if _hint(path) is float else bad
    if isinstance(default, tuple):
        bad = (bad, *default[1:])
    with pytest.raises(ValueError) as err:
        get_config("coatnet_nano", **_override(path, bad))
    assert str(err.value).startswith(f"{path}={bad!r} is invalid: ") and str(err.value).endswith(allowed), err.value


def test_drop_rates_are_the_regularisation_fields_and_the_training_only_ones():
    expected = {"drop_path_rate", "transformer.rel_pos_mlp_dropout", "head.dropout"}
    assert regularisation_fields() == expected == TRAINING_ONLY_FIELDS
    assert all(field_paths("range")[path] == "[0, 1)" for path in expected)
    with pytest.raises(ValueError, match=r"head.dropout=1.0 is invalid: must be in \[0, 1\)"):
        get_config("coatnet_nano", head={"dropout": 1.0})  # a rate of 1 drops everything, in Python as on the CLI


def test_command_line_overrides_carry_every_scalar_range():
    ranged = {path: allowed for path, allowed in field_paths("range").items() if _hint(path) in (int, float)}
    assert {"transformer.head_dim", "conv.expand_ratio", "head.dropout", "drop_path_rate"} <= set(ranged)
    for path, allowed in ranged.items():
        if path in ("num_classes",):  # linked from the DataModule, not an override
            continue
        parse_type = next(t for t in get_args(_hint(path, CoAtNetOverrides)) if t is not type(None))
        with pytest.raises(ValueError):
            parse_type(_OUTSIDE[allowed])
        assert parse_type(_hint(path)(2 if allowed in ("> 0", ">= 0") else 0.5)), path


def test_setting_refuses_a_range_or_role_it_cannot_check():
    with pytest.raises(ValueError, match="range '< 5'"):
        setting(1, range="< 5")
    with pytest.raises(ValueError, match="role 'dropout'"):
        setting(0.1, role="dropout")
    item = dataclasses.make_dataclass("Probe", [("rate", float, setting(0.1, range="[0, 1)", role=REGULARISATION))])
    assert dataclasses.fields(item)[0].metadata == {"range": "[0, 1)", "role": REGULARISATION}
