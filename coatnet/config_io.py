"""The config as plain data: fields by dotted path with their metadata, overrides from keywords, nested dicts.

YAML files, the command line and checkpoints speak in these terms (``conv.stride_at``, ``{"conv": {...}}``);
:mod:`coatnet.config` defines the fields and their metadata once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import REGULARISATION, CoAtNetConfig
from .config_checks import type_hints

# The sections: every field of CoAtNetConfig whose type is a dataclass.
_NESTED: dict[str, type] = {
    item.name: type_hints(CoAtNetConfig)[item.name]
    for item in dataclasses.fields(CoAtNetConfig)
    if dataclasses.is_dataclass(type_hints(CoAtNetConfig)[item.name])
}


def field_paths(metadata_key: str, cls: type = CoAtNetConfig, prefix: str = "") -> dict[str, Any]:
    """``{"head.dropout": "[0, 1)", ...}``: the value of ``metadata_key`` (``range`` or ``role``) of every
    field that declares it, by dotted path, sections included."""
    found: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        hint = type_hints(cls)[item.name]
        if dataclasses.is_dataclass(hint):
            found.update(field_paths(metadata_key, hint, f"{prefix}{item.name}."))
        elif metadata_key in item.metadata:
            found[prefix + item.name] = item.metadata[metadata_key]
    return found


def regularisation_fields() -> frozenset[str]:
    """Dotted paths of the fields whose role is regularisation (drop rates): training-only settings."""
    return frozenset(path for path, role in field_paths("role").items() if role == REGULARISATION)


def apply_overrides(config: CoAtNetConfig, **overrides: Any) -> CoAtNetConfig:
    """Return a copy of ``config`` with top-level fields replaced and nested dicts merged.

    ``apply_overrides(cfg, img_size=384, conv={"stride_at": "1x1"})`` changes one MBConv field and
    keeps the others, which is what a YAML config or a command line wants.
    """
    known = {f.name for f in dataclasses.fields(CoAtNetConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown CoAtNet config field(s) {sorted(unknown)}; valid fields: {sorted(known)}")
    updates: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in _NESTED and not isinstance(value, (dict, _NESTED[name])):
            raise ValueError(
                f"{name}={value!r} is invalid: {name} is a section, give a dict of its fields, e.g. "
                f"{name}={{'{dataclasses.fields(_NESTED[name])[0].name}': ...}}, or set one field: {name}.FIELD"
            )
        if name in _NESTED and isinstance(value, dict):
            current = getattr(config, name)
            nested_fields = {f.name for f in dataclasses.fields(current)}
            bad = set(value) - nested_fields
            if bad:
                raise ValueError(f"unknown {name} config field(s) {sorted(bad)}; valid: {sorted(nested_fields)}")
            value = dataclasses.replace(current, **{k: _as_tuple(v) for k, v in value.items()})
        updates[name] = _as_tuple(value)
    return dataclasses.replace(config, **updates)


def _as_tuple(value: Any) -> Any:
    """YAML and JSON give lists where the config holds tuples."""
    return tuple(value) if isinstance(value, list) else value


def config_to_dict(config: CoAtNetConfig) -> dict[str, Any]:
    """Plain nested dict, for checkpoints and logs."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> CoAtNetConfig:
    """Inverse of :func:`config_to_dict`."""
    return apply_overrides(CoAtNetConfig(), **data)
