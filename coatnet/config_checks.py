"""The checks a config runs when it is made: each field's type and declared range, then the network's shape.

A wrong value would otherwise build a model that fails deep inside ``forward``; here it fails with one line
that names the field (``head.dropout=1.0 is invalid: must be in [0, 1)``). The ranges and the types are
read from the dataclasses in :mod:`coatnet.config`, so a new field is checked without a line here.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from .config import CoAtNetConfig

# Allowed ranges of numbers (each entry of a tuple), as the error messages and the command line write them.
RANGE_TESTS: dict[str, Callable[[Any], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "[0, 1]": lambda v: 0 <= v <= 1,
    "[0, 1)": lambda v: 0 <= v < 1,  # drop rates: 1 would drop everything
}
_NOUNS = {int: "integer", float: "number", bool: "True or False", str: "string", type(None): "None"}


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config dataclass (the module uses postponed annotations)."""
    return get_type_hints(cls)


def check_fields(config: Any) -> None:
    """Every field of a config dataclass has its annotated type or Literal value, and every number (or tuple
    entry) the range its metadata declares."""
    hints = type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if not _matches(value, hints[item.name]):
            raise ValueError(f"{_name(config, item.name)}={value!r} is invalid: expected {_describe(hints[item.name])}")
    for item in dataclasses.fields(config):
        if "range" not in item.metadata:
            continue
        value, allowed = getattr(config, item.name), item.metadata["range"]
        entries = value if isinstance(value, tuple) else (value,)
        if not all(map(RANGE_TESTS[allowed], entries)):
            each = "each entry " if isinstance(value, tuple) else ""
            written = allowed if allowed.startswith(("<", ">")) else f"in {allowed}"
            raise ValueError(f"{_name(config, item.name)}={value!r} is invalid: {each}must be {written}")


def check_network(config: CoAtNetConfig) -> None:
    """The fields fit together: one depth, width and known layout letter per stage, each stage buildable by
    its block, and an image size the network's total stride divides."""
    check_fields(config)
    if not config.layout:
        raise ValueError("layout is empty: give one letter per stage, e.g. layout='CCTT'")
    if not (len(config.depths) == len(config.widths) == len(config.layout)):
        raise ValueError(
            f"depths {config.depths}, widths {config.widths} and layout {config.layout!r} must have one entry per stage"
        )
    from .blocks import BLOCKS  # the table of layout letters (coatnet.blocks imports coatnet.config)

    unknown = sorted(set(config.layout) - set(BLOCKS))
    if unknown:
        known = ", ".join(f"{letter} ({block.__name__})" for letter, block in sorted(BLOCKS.items()))
        raise ValueError(
            f"layout {config.layout!r} has unknown letter(s) {''.join(unknown)}: the layout letters are {known}; "
            "add one with coatnet.blocks.register_block"
        )
    for index, letter in enumerate(config.layout):
        BLOCKS[letter].check_stage(config, index)
    stride = config.total_stride
    for side in config.img_size:
        if side <= 0 or side % stride:
            raise ValueError(
                f"image size {config.img_size[0]}x{config.img_size[1]} is invalid: each side must be a "
                f"positive multiple of {stride} (the network's total stride). Resize or crop the "
                f"input, e.g. to {max(stride, round(side / stride) * stride)}."
            )


def _name(config: Any, field_name: str) -> str:
    return f"{config.section}.{field_name}" if config.section else field_name


def _matches(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return any(isinstance(value, type(a)) and value == a for a in args)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        return f"a tuple of {count}{_describe(args[0])}s"
    return _NOUNS.get(hint, getattr(hint, "__name__", str(hint)))
