"""Allowed ranges of the hyper-parameters, as number types that jsonargparse checks while parsing.

``--model.min_lr_ratio=5`` is then refused before anything is built, with the key and the range in the
message, instead of training with a schedule that rises instead of decaying. Python callers, who skip the
parser, get the same check from :func:`check_ranges`.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, restricted_number_type

Fraction = ClosedUnitInterval  # a probability, a ratio: [0, 1]
DropRate = restricted_number_type("DropRate", float, [(">=", 0), ("<", 1)])  # 1 would drop everything
DecayFactor = restricted_number_type("DecayFactor", float, [(">", 0), ("<=", 1)])  # 1: no decay
ClassCount = restricted_number_type("ClassCount", int, [(">=", 2)])  # one class leaves nothing to learn
__all__ = ["ClassCount", "DecayFactor", "DropRate", "Fraction", "NonNegativeFloat", "NonNegativeInt", "check_ranges"]


def _range_type(hint: Any) -> type | None:
    """The restricted number type in ``hint`` (``Optional[...]`` unwrapped), or None."""
    if get_origin(hint) in (Union, types.UnionType):
        found = [t for t in map(_range_type, get_args(hint)) if t is not None]
        return found[0] if found else None
    return hint if isinstance(hint, type) and hasattr(hint, "_restrictions") else None


def check_ranges(function: Callable[..., Any], arguments: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first of ``arguments`` outside the range its annotation in ``function`` gives."""
    hints = get_type_hints(function)
    for name in inspect.signature(function).parameters:
        range_type, value = _range_type(hints.get(name)), arguments.get(name)
        if range_type is None or value is None:
            continue
        try:
            range_type(value)
        except ValueError as err:
            raise ValueError(f"{name}={value!r} is out of range: {err}") from None
