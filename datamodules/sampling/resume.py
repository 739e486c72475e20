"""Training passes that start where Lightning expects them to: in the epoch it has just set, after
the batches an interrupted epoch already trained on."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.sampling.draws import draw_indices


class SkipsTrainedSamples:
    """Sampler mixin (for a ``DistributedSampler``): the next pass leaves out its first ``skip_next(n)``
    samples, once. Indices carry their (seed, epoch) key, from which each sample's augmentation is drawn."""

    _skip = 0

    def skip_next(self, samples: int) -> None:
        self._skip = samples

    def _untrained(self, order: list[int]) -> list[int]:
        skip, self._skip = self._skip, 0
        return draw_indices(order[skip:], self.seed, self.epoch)  # type: ignore[attr-defined]


class _DeferredPass:
    """An iterator that creates the loader's real one at the first ``next()``."""

    def __init__(self, loader: ResumingDataLoader) -> None:
        self.loader = loader
        self.inner: Iterator[Any] | None = None

    def __iter__(self) -> _DeferredPass:
        return self

    def __next__(self) -> Any:
        if self.inner is None:
            self.inner = self.loader.start_pass()
        return next(self.inner)


def batches_done_this_epoch(trainer: Any) -> int:
    """Batches of the current training epoch that Lightning counts as done (non-zero after a mid-epoch resume).

    Reads the fit loop's progress counter (``fit_loop.epoch_loop.batch_progress``, internal to Lightning and
    guarded by ``tests/unit/test_lightning_private_names.py``)."""
    if trainer is None or not trainer.training:
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


class ResumingDataLoader(DataLoader):
    """A training loader whose pass starts at the first ``next()``, not at ``iter()``.

    Lightning creates the first epoch's iterator before it calls ``set_epoch``, and loader workers
    draw their first indices as soon as an iterator exists, so a run resumed at epoch 7 would read
    epoch 0's order. Starting at the first ``next()`` (after ``set_epoch``) fixes that, and lets a
    pass begin after the ``batches_done()`` batches that an interrupted epoch already trained on
    (Lightning's own count; 0 at the start of an epoch).

    Worker seeds come from (seed, epoch, rank) through the loader's own generator, not from the
    global torch stream: a new iterator would otherwise take a draw from that stream, which a
    resumed run takes at another point than an uninterrupted one (or not at all, with persistent
    workers), shifting every later drop-path and Mixup draw. The sampler must be a
    ``DistributedSampler`` that ``SkipsTrainedSamples``.
    """

    def __init__(self, *args: Any, batches_done: Callable[[], int] = lambda: 0, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        if not (isinstance(self.sampler, SkipsTrainedSamples) and isinstance(self.sampler, DistributedSampler)):
            raise TypeError(
                f"ResumingDataLoader needs a resumable DistributedSampler, got {type(self.sampler).__name__}"
            )
        self.batches_done = batches_done

    def __iter__(self) -> Iterator[Any]:
        return _DeferredPass(self)

    def state_dict(self) -> dict[str, int]:
        """What Lightning saves with the loop state: the position itself comes from the loop's batch count."""
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = state.get("batch_size", self.batch_size)
        if saved != self.batch_size:
            warnings.warn(
                f"the checkpoint was written with batch_size {saved}, this run uses {self.batch_size}: an interrupted "
                f"epoch continues {self.batches_done()} batches of the new size in, not where it stopped.",
                stacklevel=2,
            )

    def start_pass(self) -> Iterator[Any]:
        sampler = self.sampler
        sampler.skip_next(self.batches_done() * self.batch_size)
        worker_seed = np.random.SeedSequence([sampler.seed, sampler.epoch, sampler.rank]).generate_state(1)[0]
        self.generator.manual_seed(int(worker_seed))
        return super().__iter__()
