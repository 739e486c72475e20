"""CoAtNet: stem (S0) -> stages S1..S4 -> classifier head, and the registry of named variants (``create_model``).

As in timm, ``forward_features`` returns the last feature map and ``forward_head`` pools and classifies; the
rest of timm's model API is ``timm_api.TimmApi``. The paper's variants are in ``config``, timm's ``_rw`` ones
in ``timm_variants``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BLOCKS, Block, make_activation, make_channel_norm
from .config import PAPER_VARIANTS, CoAtNetConfig, HeadConfig
from .config_io import apply_overrides
from .features import CoAtNetFeatures
from .recompute import RecomputedBlock
from .timm_api import TimmApi, check_input, default_pretrained_cfg


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

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """x: last stage output (B, C, H, W)."""
        x = self.final_norm(x.permute(0, 2, 3, 1)).mean((1, 2))
        x = self.dropout(self.pre_logits(self.pool_norm(x)))
        return x if pre_logits else self.fc(x)


class CoAtNet(TimmApi):
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, C, H, W), as timm's ``forward_features``. A ``norm_pool`` head
        applies its final norm in ``forward_head`` (timm applies it here), so ``forward_head`` always takes this."""
        check_input(self.config, x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the last stage's map and classify; ``pre_logits`` stops before the classifier."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

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


_VARIANTS: dict[str, Callable[[], CoAtNetConfig]] = dict(PAPER_VARIANTS)  # timm_variants adds timm's


def register_variant(name: str) -> Callable[[Callable[[], CoAtNetConfig]], Callable[[], CoAtNetConfig]]:
    """Decorator: register a zero-argument function that returns a variant's config."""

    def wrap(fn: Callable[[], CoAtNetConfig]) -> Callable[[], CoAtNetConfig]:
        if name in _VARIANTS:
            raise ValueError(f"variant {name!r} is already registered")
        _VARIANTS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_VARIANTS)


def get_config(name: str, **overrides: Any) -> CoAtNetConfig:
    """The config of a named variant with overrides applied (see :func:`coatnet.config_io.apply_overrides`)."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown CoAtNet variant {name!r}; available: {', '.join(list_models())}")
    return apply_overrides(_VARIANTS[name](), **overrides)


@overload
def create_model(
    name: str, features_only: Literal[False] = False, out_indices: None = None, **overrides: Any
) -> CoAtNet: ...


@overload
def create_model(
    name: str, features_only: Literal[True], out_indices: Sequence[int] | None = None, **overrides: Any
) -> CoAtNetFeatures: ...


def create_model(
    name: str, features_only: bool = False, out_indices: Sequence[int] | None = None, **overrides: Any
) -> CoAtNet | CoAtNetFeatures:
    """Build a named variant, e.g. ``create_model("coatnet_0", img_size=384, num_classes=10)``.

    ``features_only=True`` returns a backbone whose forward gives the feature maps at ``out_indices``
    (0 = stem, 1..N = stages; default every stage), as timm's ``create_model`` does.
    """
    model = CoAtNet(get_config(name, **overrides))
    if features_only:
        return CoAtNetFeatures(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices picks feature maps: pass features_only=True with it")
    return model


def named_constructor(name: str) -> Callable[..., CoAtNet]:
    """``coatnet_0(**overrides)``-style builder of variant ``name``, for ``coatnet``'s names and torch.hub."""

    def build(**overrides: Any) -> CoAtNet:
        return create_model(name, **overrides)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Build ``{name}`` (see ``coatnet.list_models``); keyword arguments override config fields."
    return build
