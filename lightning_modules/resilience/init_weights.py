"""``model.init_from`` is loaded into a new network unless a checkpoint about to be restored replaces every weight.

The CLI knows whether a checkpoint will be restored (``--ckpt_path``) before it builds the model, and the
model is built inside jsonargparse's instantiation, so the decision travels as a context variable: a fine-tuned
run then resumes, validates or tests from its ``config.yaml`` even after the original weights file has moved.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from coatnet.weights import load_for_finetune

_WEIGHTS_FROM_CHECKPOINT = contextvars.ContextVar("weights_from_checkpoint", default=False)


@contextlib.contextmanager
def weights_from_checkpoint(active: bool) -> Iterator[None]:
    """While active, :func:`load_init_from` leaves ``init_from`` unloaded (the hyper-parameter keeps its value)."""
    token = _WEIGHTS_FROM_CHECKPOINT.set(active)
    try:
        yield
    finally:
        _WEIGHTS_FROM_CHECKPOINT.reset(token)


def load_init_from(model: nn.Module, init_from: str | None) -> None:
    """Load the fine-tuning weights ``init_from`` into ``model`` and say what was loaded, unless a checkpoint
    will replace them."""
    if init_from and not _WEIGHTS_FROM_CHECKPOINT.get():
        rank_zero_info(str(load_for_finetune(model, init_from)))
