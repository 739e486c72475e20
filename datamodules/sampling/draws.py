"""Random draws per training sample that depend only on (seed, epoch, index).

Samplers hand out ``DrawIndex`` values: plain ints that also carry their epoch's key. A dataset built with
``PerSampleDraws`` seeds one numpy and one torch generator from (seed, epoch, index) around each
``__getitem__``; the crop and augmentation code of loader workers takes its draws from them
(``current_draws``). So a sample is augmented the same way whichever worker loads it, however many workers
there are, and in a run resumed mid-epoch, without seeding workers or touching global random state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from typing import Any

import numpy as np
import torch


class DrawIndex(int):
    """A dataset index that also carries its epoch's draw key ``(seed, epoch)``."""

    key: tuple[int, int]

    def __new__(cls, index: int, seed: int, epoch: int) -> DrawIndex:
        value = super().__new__(cls, index)
        value.key = (int(seed), int(epoch))
        return value

    def __reduce__(self) -> tuple[Any, ...]:  # travels to loader workers intact
        return (DrawIndex, (int(self), *self.key))


def draw_indices(order: Iterable[int], seed: int, epoch: int) -> list[int]:
    return [DrawIndex(i, seed, epoch) for i in order]


class SampleDraws:
    """One sample's numpy and torch generators, each seeded from the sample's ``SeedSequence`` when first used
    (a worker building both for every image spent about as long on that as on resizing the crop)."""

    def __init__(self, sequence: np.random.SeedSequence) -> None:
        self.sequence = sequence

    @cached_property
    def numpy(self) -> np.random.Generator:
        return np.random.default_rng(self.sequence)

    @cached_property
    def torch(self) -> torch.Generator:
        seed = int(self.sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        return torch.Generator().manual_seed(seed)


def draws_for(index: int) -> SampleDraws:
    """The generators of sample ``index`` (an index without a key, e.g. ``dataset[3]``, uses key (0, 0))."""
    return SampleDraws(np.random.SeedSequence([*getattr(index, "key", (0, 0)), int(index)]))


_CURRENT: ContextVar[SampleDraws | None] = ContextVar("sample_draws", default=None)


def current_draws() -> SampleDraws:
    draws = _CURRENT.get()
    if draws is None:
        raise RuntimeError("per-sample draws are only set inside a PerSampleDraws dataset's __getitem__")
    return draws


@contextmanager
def sample_draws(index: int) -> Iterator[SampleDraws]:
    """Sample ``index``'s draws are ``current_draws()`` inside the block."""
    draws = draws_for(index)
    token = _CURRENT.set(draws)
    try:
        yield draws
    finally:
        _CURRENT.reset(token)


class PerSampleDraws:
    """Dataset mixin (put it first among the bases): ``__getitem__(index)`` runs with ``index``'s draws set."""

    def __getitem__(self, index: int) -> Any:
        with sample_draws(index):
            return super().__getitem__(index)  # type: ignore[misc]
