"""``ImageClassifier(model_overrides=...)`` as a typed dataclass: every ``CoAtNetConfig`` field, optional.

jsonargparse merges a dataclass key by key, so several ``--config`` files and items such as
``--model.model_overrides.transformer.head_dim 64`` each set only their own keys, and a misspelt key or a
value of the wrong type or range is refused while parsing. A field left at None keeps the variant's value
(so an override cannot set a field to None). The classes, and the ranges checked, are generated from
``coatnet.config``'s fields and their metadata, so they follow every field added there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional, get_type_hints

from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from coatnet.config import CoAtNetConfig
from coatnet.config_io import field_paths
from coatnet.model import get_config
from lightning_modules.hparam_ranges import Fraction, ProperFraction

LINKED_FIELDS = frozenset({"num_classes", "img_size"})  # set from the DataModule (num_classes, image_size)
# The range each coatnet.config field declares, as the number type jsonargparse checks while parsing.
_RANGE_TYPES = {
    ("> 0", int): PositiveInt, ("> 0", float): PositiveFloat, (">= 0", int): NonNegativeInt,
    (">= 0", float): NonNegativeFloat, ("[0, 1]", float): Fraction, ("[0, 1)", float): ProperFraction,
}  # fmt: skip


def _range_type(path: str, hint: Any) -> Any:
    """The parse-time type of field ``path``: its range type for a number with a declared range, else ``hint``.
    Tuples keep their plain type; ``coatnet.config`` checks their entries when the config is built."""
    return _RANGE_TYPES.get((field_paths("range").get(path), hint), hint)


def _optional_mirror(config_class: type, prefix: str = "") -> type:
    """A dataclass with ``config_class``'s fields, each Optional with default None; sections nest alike."""
    hints = get_type_hints(config_class)
    fields: list[tuple[str, Any, Any]] = []
    for item in dataclasses.fields(config_class):
        if not prefix and item.name in LINKED_FIELDS:
            continue
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            section = _optional_mirror(hint, f"{prefix}{item.name}.")
            fields.append((item.name, section, dataclasses.field(default_factory=section)))
        else:
            # Optional[...] on purpose: with X | None, jsonargparse's --help would show some of these fields as
            # "PositiveInt | null" and the rest (Literal, tuple) still as "Optional[...]".
            fields.append((item.name, Optional[_range_type(prefix + item.name, hint)], None))  # noqa: UP045
    name = config_class.__name__.removesuffix("Config") + "Overrides"
    mirror = dataclasses.make_dataclass(name, fields)
    mirror.__module__ = __name__
    mirror.__doc__ = f"Fields of ``{config_class.__name__}`` to change; None keeps the variant's value."
    return mirror


CoAtNetOverrides = _optional_mirror(CoAtNetConfig)


def _plain(value: Any) -> Any:
    """Built-in types only (the range types subclass float and int), lists for tuples: checkpoints keep plain values."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _set_fields(tree: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            value = _set_fields(value)
        if value is not None and value != {}:
            found[key] = _plain(value)
    return found


def overrides_dict(overrides: Any) -> dict[str, Any]:
    """The fields ``overrides`` sets, nested as ``coatnet.get_config`` takes them.

    Takes a ``CoAtNetOverrides``, a plain dict (what checkpoints and Python callers pass; None values are unset
    fields, as in the hyper-parameters the CLI records) or None.
    """
    if overrides is None:
        return {}
    return _set_fields(dataclasses.asdict(overrides) if dataclasses.is_dataclass(overrides) else overrides)


def network_config(hparams: Mapping[str, Any]) -> CoAtNetConfig:
    """The network ``ImageClassifier`` hyper-parameters describe; training, resuming and export all build this one.

    ``model_overrides`` may be a dict of the set fields (checkpoints of every version) or a ``CoAtNetOverrides``.
    """
    return get_config(
        hparams["model_name"],
        num_classes=hparams["num_classes"],
        img_size=tuple(hparams["image_size"]),
        **overrides_dict(hparams.get("model_overrides")),
    )
