"""CoAtNet: stem (S0) -> stages S1..S4 -> classifier head."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BLOCKS, Block
from .config import CoAtNetConfig, HeadConfig, apply_overrides
from .layers import make_activation, make_channel_norm


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
        self.apply(_init_weights)

    @property
    def img_size(self) -> tuple[int, int]:
        return self.config.img_size

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}"
            )
        if tuple(x.shape[-2:]) != self.config.img_size:
            h, w = self.config.img_size
            raise ValueError(
                f"input is {x.shape[-2]}x{x.shape[-1]} but this CoAtNet was built for {h}x{w}: the "
                f"relative-position tables are sized for it. Resize the input, or build the model "
                f"with img_size=({x.shape[-2]}, {x.shape[-1]}) (any multiple of {self.config.total_stride}) "
                "or call model.set_img_size(...)."
            )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps (S1..S4), NCHW, for use as a detection/segmentation backbone."""
        self._check_input(x)
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])

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

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear for a new number of classes (fine-tuning)."""
        self.head.reset(num_classes)
        self.config = apply_overrides(self.config, num_classes=num_classes)

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild for another input size, interpolating every relative-position table."""
        new_config = apply_overrides(self.config, img_size=img_size)
        for stage, grid in zip(self.stages, new_config.feature_sizes()):
            for block in stage:
                block.set_grid(grid)
        self.config = new_config


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
