"""Loading a state dict into a CoAtNet: strict, with a short counted report, and without a wasted random init."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .attention import RelativeAttention
from .config import CoAtNetConfig
from .errors import CheckpointError
from .model import CoAtNet

# Non-persistent buffers that build_uninitialised knows how to recompute.
_DERIVED_BUFFERS = (".attn.index", ".attn.rel_pos.coords")


def _short_list(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_dict_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> list[str]:
    """A few lines describing missing, unexpected and reshaped keys; empty when they fit."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    lines = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", reshaped)):
        if keys:
            lines.append(f"  {len(keys)} {label}: {_short_list(keys)}")
    return lines


def load_mapped(model: CoAtNet, mapped: Mapping[str, Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with a short, counted report instead of torch's full dump.

    ``what`` names source and target for the message, e.g. "timm state dict for coatnet_0_rw".
    """
    problems = state_dict_mismatch(model.state_dict(), mapped)
    if problems:
        cfg = model.config
        header = f"{what} does not fit (img {cfg.img_size[0]}x{cfg.img_size[1]}, {cfg.num_classes} classes):"
        raise CheckpointError("\n".join([header, *problems]))
    model.load_state_dict(mapped, strict=True)


def build_uninitialised(config: CoAtNetConfig) -> CoAtNet:
    """A model whose weights are about to be loaded: skips the random init (seconds for CoAtNet-3/4).

    Parameters are left uninitialised; the derived buffers (relative-position indices and
    coordinates) are recomputed. A model with other non-persistent buffers is built normally.
    """
    with torch.device("meta"):
        model = CoAtNet(config)
    derived = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    if not all(name.endswith(_DERIVED_BUFFERS) for name in derived):
        return CoAtNet(config)
    model.to_empty(device="cpu")
    for module in model.modules():
        if isinstance(module, RelativeAttention):
            module.set_grid(module.rel_pos.grid)
    return model
