"""``create_model(name, features_only=True)``: a CoAtNet backbone whose forward returns feature maps (timm's idiom)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .timm_api import check_input, feature_indices

if TYPE_CHECKING:
    from .model import CoAtNet


class CoAtNetFeatures(nn.Module):
    """The stem and the stages up to the last one asked for; no head, so no parameter goes unused.

    Parameter names are the full model's (``stem.*``, ``stages.*``), so a CoAtNet state dict loads with
    ``strict=False``. ``out_indices`` are feature indices: 0 is the stem, 1..N the stages (None: every stage).
    """

    def __init__(self, model: CoAtNet, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        count = len(model.stages) + 1
        self.out_indices = feature_indices(count, range(1, count) if out_indices is None else out_indices)
        self.feature_info: list[dict[str, Any]] = [model.feature_info[i] for i in self.out_indices]
        self.config = model.config
        self.stem = model.stem
        self.stages = model.stages[: max(self.out_indices)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(self.config, x)
        x = self.stem(x)
        maps = [x] if 0 in self.out_indices else []
        for index, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if index in self.out_indices:
                maps.append(x)
        return maps
