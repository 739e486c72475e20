"""CoAtNet: stem (S0) -> stages S1..S4 -> classifier head, with timm's model API.

As in timm, ``forward_features`` returns the last feature map, ``forward_intermediates`` the stem and
stage maps (feature index 0 is the stem, 1..N the stages), and ``forward_head`` pools and classifies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BLOCKS, Block
from .config import CoAtNetConfig, HeadConfig, apply_overrides
from .layers import make_activation, make_channel_norm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvStem(nn.Module):
    """S0: 3x3 conv (stride 2) -> BN -> act -> 3x3 conv. The next block's pre-norm follows."""

    def __init__(self, in_chans: int, widths: tuple[int, int], stride: int, bias: bool, act: str, eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=stride, padding=1, bias=bias)
        self.norm1 = nn.BatchNorm2d(widths[0], eps=eps)
        self.act1 = make_activation(act)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act1(self.norm1(self.conv1(x))))


class PatchStem(nn.Module):
    """ViT-style non-overlapping patch embedding, for the paper's ViT-REL baseline."""

    def __init__(self, in_chans: int, width: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorms in ``module`` normalise with batch statistics as usual but leave their running ones alone."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.training and m.track_running_stats]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)


class RecomputedBlock:
    """A block for ``checkpoint``: its second run (the recomputation in backward) updates no BatchNorm
    running statistics, so they move once per step, as without checkpointing. Compiled graphs need
    no such care: their recomputation replays no buffer updates."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self.runs = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        if self.runs == 1:
            return self.block(x)
        with frozen_batchnorm_statistics(self.block):
            return self.block(x)


class Stage(nn.Sequential):
    """Blocks of one kind, run in order. Takes and returns NCHW; blocks that declare ``tokens_last``
    run on (B, H, W, C) inside. With ``grad_checkpointing`` each block's activations are recomputed
    in the backward pass instead of kept, trading about one extra forward for activation memory."""

    grad_checkpointing = False

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__(*blocks)
        self.tokens_last = type(blocks[0]).tokens_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens_last:
            return self.run_blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.run_blocks(x)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for block in self:
            if recompute:
                run = block if torch.compiler.is_compiling() else RecomputedBlock(block)
                x = checkpoint(run, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class ClassifierHead(nn.Module):
    """Pooling and classifier; see :class:`coatnet.config.HeadConfig` for the kinds."""

    def __init__(self, dim: int, num_classes: int, cfg: HeadConfig, norm: str, eps: float) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.final_norm = make_channel_norm(norm, dim, eps) if cfg.kind == "norm_pool" else nn.Identity()
        self.pool_norm = nn.LayerNorm(dim, eps=eps) if cfg.kind == "pre_logits" else nn.Identity()
        hidden = cfg.hidden or dim
        if cfg.kind == "pre_logits":
            self.pre_logits: nn.Module = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
            hidden = dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """x: last stage output (B, C, H, W)."""
        x = self.final_norm(x.permute(0, 2, 3, 1)).mean((1, 2))
        x = self.dropout(self.pre_logits(self.pool_norm(x)))
        return x if pre_logits else self.fc(x)


class CoAtNet(nn.Module):
    """CoAtNet for a fixed input size; see :class:`coatnet.config.CoAtNetConfig`."""

    def __init__(self, config: CoAtNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        if cfg.stem.patch_size:
            self.stem: nn.Module = PatchStem(cfg.in_chans, cfg.stem.widths[-1], cfg.stem.patch_size)
        else:
            self.stem = ConvStem(
                cfg.in_chans, cfg.stem.widths, cfg.stem.stride, cfg.stem.bias, cfg.conv.act, cfg.conv.norm_eps
            )
        total_blocks = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        stages: list[nn.Module] = []
        dim_in = cfg.stem.widths[-1]
        for depth, dim, letter, stride, grid in zip(
            cfg.depths, cfg.widths, cfg.layout, cfg.stage_strides, cfg.feature_sizes()
        ):
            block = BLOCKS[letter]  # the first block of a stage changes width and resolution
            stages.append(Stage([
                block(dim_in if j == 0 else dim, dim, stride if j == 0 else 1, grid, cfg, rates.pop(0))
                for j in range(depth)
            ]))  # fmt: skip
            dim_in = dim
        self.stages = nn.ModuleList(stages)
        self.num_features = cfg.widths[-1]
        self.head = ClassifierHead(
            self.num_features, cfg.num_classes, cfg.head, cfg.transformer.norm, cfg.transformer.norm_eps
        )
        self.pretrained_cfg = default_pretrained_cfg(cfg)
        self.apply(_init_weights)

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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, C, H, W), as timm's ``forward_features``. A ``norm_pool`` head
        applies its final norm in ``forward_head`` (timm applies it here), so ``forward_head`` always takes this."""
        check_input(self.config, x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

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

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the last stage's map and classify; ``pre_logits`` stops before the classifier."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth for timm's layer-wise decay: the stem, each block (each stage with
        ``coarse``), then the head, unmatched as in timm. The final norm joins the last block ((99999,))."""
        blocks = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return dict(stem=r"^stem", blocks=[(blocks, None), (r"^head\.final_norm", (99999,))])

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def no_weight_decay(self) -> set[str]:
        """Names of the relative-position parameters, which should not be decayed."""
        return {name for name, _ in self.named_parameters() if ".rel_pos." in name}

    def set_grad_checkpointing(self, enable: bool | Sequence[int] = True) -> None:
        """Recompute block activations in backward: less memory (bigger batches, CoAtNet-3/4 at 384)
        for about a third more compute. Dropout and drop-path masks replay exactly.

        ``enable`` is True/False for every stage, or the indices of the stages to recompute
        (0 = S1 ... 3 = S4): the MBConv stages hold most activation memory per multiply-add
        (``coatnet.summary.activation_bytes``), so ``[0, 1]`` saves much of it for less recompute.
        """
        count = len(self.stages)
        chosen = set(range(count)) if enable is True else set() if enable is False else set(enable)
        if not chosen <= set(range(count)):
            raise ValueError(
                f"grad_checkpointing stages must be indices 0..{count - 1} (S1..S{count}), got {sorted(chosen)}"
            )
        for index, stage in enumerate(self.stages):
            stage.grad_checkpointing = index in chosen

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the last Linear for a new number of classes (fine-tuning); 0 removes it.
        ``global_pool`` is timm's argument; CoAtNet's head always averages."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r} is not supported: CoAtNet's head averages ('avg')")
        self.head.reset(num_classes)
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


def _init_weights(module: nn.Module) -> None:
    """Conv: fan-out normal (EfficientNet); Linear: truncated normal 0.02, zero bias."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
