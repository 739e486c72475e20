"""timm's model API beyond the training forward: feature maps for backbones, parameter groups, and fine-tuning
at another input size or class count. :class:`coatnet.model.CoAtNet` inherits it from :class:`TimmApi`.

Feature index 0 is the stem, 1..N the stages S1..SN, as ``feature_info`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import CoAtNetConfig
from .config_io import apply_overrides

if TYPE_CHECKING:
    from .model import ClassifierHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmApi(nn.Module):
    """The methods timm's tools call on a model (``timm.create_model``'s models have them), on CoAtNet's parts."""

    config: CoAtNetConfig
    stem: nn.Module
    stages: nn.ModuleList
    head: ClassifierHead
    pretrained_cfg: dict[str, Any]

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """Channels, stride and module of each map ``forward_intermediates`` returns: stem, then each stage."""
        info = [dict(num_chs=self.config.stem.widths[-1], reduction=self.config.stem_stride, module="stem")]
        reduction = self.config.stem_stride
        for index, (width, stride) in enumerate(zip(self.config.widths, self.config.stage_strides)):
            reduction *= stride
            info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{index}"))
        return info

    @property
    def img_size(self) -> tuple[int, int]:
        return self.config.img_size

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps for a detection or segmentation backbone, in timm's convention.

        ``indices``: None for all, an int n for the last n, or a list of feature indices (0 = stem,
        1..N = stages S1..SN; negative ones count from the end), see ``feature_info``. ``norm`` applies a
        ``norm_pool`` head's final norm to the last stage's map. ``stop_early`` skips the stages after the
        last one asked for. Returns the maps, or (the last stage's map for ``forward_head``, the maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported: CoAtNet returns NCHW maps")
        count = len(self.stages) + 1
        take = feature_indices(count, indices)
        check_input(self.config, x)
        x = self.stem(x)
        maps = [x] if 0 in take else []
        stages = self.stages[: max(take)] if stop_early else self.stages
        for index, stage in enumerate(stages, start=1):
            x = stage(x)
            if index in take:
                last = norm and index == count - 1
                maps.append(self.head.final_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if last else x)
        return maps if intermediates_only else (x, maps)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth for timm's layer-wise decay: the stem, each block (each stage with
        ``coarse``), then the head, unmatched as in timm. The final norm joins the last block ((99999,))."""
        blocks = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return dict(stem=r"^stem", blocks=[(blocks, None), (r"^head\.final_norm", (99999,))])

    def no_weight_decay(self) -> set[str]:
        """Names of the relative-position parameters, which should not be decayed (the optimizer set-up asks)."""
        return {name for name, _ in self.named_parameters() if ".rel_pos." in name}

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the last Linear for a new number of classes (fine-tuning); 0 removes it.
        ``global_pool`` is timm's argument; CoAtNet's head always averages."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r} is not supported: CoAtNet's head averages ('avg')")
        head = self.head
        head.fc = nn.Linear(head.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(head.fc, nn.Linear):
            nn.init.trunc_normal_(head.fc.weight, std=0.02)
            nn.init.zeros_(head.fc.bias)
        self.config = apply_overrides(self.config, num_classes=num_classes)
        self.pretrained_cfg["num_classes"] = num_classes

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild for another input size, interpolating every relative-position table."""
        new_config = apply_overrides(self.config, img_size=img_size)
        for stage, grid in zip(self.stages, new_config.feature_sizes()):
            for block in stage:
                block.set_grid(grid)
        self.config = new_config
        self.pretrained_cfg["input_size"] = (new_config.in_chans, *new_config.img_size)


def check_input(config: CoAtNetConfig, x: torch.Tensor) -> None:
    """Refuse images of another channel count or size than ``config`` was built for, naming both and the fix."""
    if x.ndim != 4 or x.shape[1] != config.in_chans:
        raise ValueError(f"expected images of shape (B, {config.in_chans}, H, W), got {tuple(x.shape)}")
    if tuple(x.shape[-2:]) != config.img_size:
        h, w = config.img_size
        raise ValueError(
            f"input is {x.shape[-2]}x{x.shape[-1]} but this CoAtNet was built for {h}x{w}: the "
            f"relative-position tables are sized for it. Resize the input, or build the model "
            f"with img_size=({x.shape[-2]}, {x.shape[-1]}) (any multiple of {config.total_stride}) "
            "or call model.set_img_size(...)."
        )


def default_pretrained_cfg(config: CoAtNetConfig) -> dict[str, Any]:
    """timm's ``pretrained_cfg``: what inputs the model takes. Loaders of trained weights replace the
    preprocessing (``mean``, ``std``, ``interpolation``, ``crop_pct``) with the one the weights record;
    untrained, it is the ImageNet preprocessing the ImageFolder data module uses by default."""
    return dict(
        input_size=(config.in_chans, *config.img_size),
        fixed_input_size=True,  # the relative-position tables are sized for it; see set_img_size
        num_classes=config.num_classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bicubic",
        crop_pct=0.875,
        first_conv="stem.proj" if config.stem.patch_size else "stem.conv1",
        classifier="head.fc",
    )


def feature_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """Feature indices in 0..count-1 from timm's ``indices``: None (all), n (the last n) or a list (may be negative)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices} asks for the last {indices} feature maps; there are 1..{count}")
        return list(range(count - indices, count))
    chosen = [index + count if index < 0 else index for index in indices]
    if not chosen or not all(0 <= index < count for index in chosen):
        raise ValueError(f"indices {list(indices)} must be feature indices in {-count}..{count - 1} (0 is the stem)")
    return sorted(set(chosen))
