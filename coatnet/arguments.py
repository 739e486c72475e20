"""Argument parsing shared by ``python -m coatnet`` and ``export.py``: one-line errors, checked numbers, H W sizes."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any, NoReturn

USER_ERROR_EXIT = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``error:`` line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An integer >= 1, e.g. a number of timed runs."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0, e.g. a tolerance (``nan`` would make every comparison pass or fail silently)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


class ImageSize(argparse.Action):
    """``--img-size H W``, or one side for a square input, stored as (H, W)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        sides: Sequence[int] = values
        if len(sides) > 2:
            parser.error(f"{option} takes H W, or one side for a square input; got {len(sides)} values")
        setattr(namespace, self.dest, (sides[0], sides[-1]))
