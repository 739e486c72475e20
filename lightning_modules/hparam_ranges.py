"""Allowed ranges of the hyper-parameters, as number types that jsonargparse checks while parsing.

``--model.min_lr_ratio=5`` is then refused before anything is built, with the key and the range in the
message, instead of training with a schedule that rises instead of decaying. Python callers, who skip the
parser, get the same check from :func:`check_ranges`.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    restricted_number_type,
)

Fraction = ClosedUnitInterval  # a probability, a ratio: [0, 1]
ProperFraction = restricted_number_type("ProperFraction", float, [(">=", 0), ("<", 1)])  # drop rates, smoothing
DecayFactor = restricted_number_type("DecayFactor", float, [(">", 0), ("<=", 1)])  # 1: no decay
__all__ = [
    "DecayFactor", "Fraction", "NonNegativeFloat", "NonNegativeInt", "PositiveInt", "ProperFraction",
    "allowed_range", "check_optimizer", "check_ranges",
]  # fmt: skip

_BOUND = re.compile(r"v(>=|>|<=|<)(-?[\d.e+-]+)")


def allowed_range(rule: str) -> str:
    """A restriction as jsonargparse words it, ``v>=0 and v<1``, as ``[0, 1)``; a one-sided one as ``>= 2``."""
    bounds = {op[0]: (op, bound) for op, bound in _BOUND.findall(rule)}
    if set(bounds) != {">", "<"}:
        return " and ".join(f"{op} {bound}" for op, bound in bounds.values())
    (low_op, low), (high_op, high) = bounds[">"], bounds["<"]
    return f"{'[' if low_op == '>=' else '('}{low}, {high}{']' if high_op == '<=' else ')'}"


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
            rule = str(err).partition("restriction ")[2]
            raise ValueError(f"{name}={value!r} is out of range: allowed {allowed_range(rule)}") from None


def check_optimizer(optimizer: Any) -> None:
    """Refuse a learning rate <= 0 or a negative weight decay in ``model.optimizer`` (parsed, not yet built)."""
    init_args = optimizer.get("init_args") if hasattr(optimizer, "get") else None
    lr, weight_decay = (init_args.get(key) if init_args else None for key in ("lr", "weight_decay"))
    if isinstance(lr, (int, float)) and lr <= 0:
        raise ValueError(f"model.optimizer.init_args.lr={lr} is out of range: allowed > 0 (the peak learning rate)")
    if isinstance(weight_decay, (int, float)) and weight_decay < 0:
        raise ValueError(f"model.optimizer.init_args.weight_decay={weight_decay} is out of range: allowed >= 0")
