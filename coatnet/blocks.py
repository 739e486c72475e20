"""The blocks a layout letter names, in one table: ``BLOCKS``. Each block owns its downsampling path.

MBConv blocks (``C``) work on NCHW tensors (channels_last memory friendly). Transformer blocks (``T``)
work on (B, H, W, C) tokens, so LayerNorm and Linear run on contiguous channels and, with channels_last
inputs, the hand-over between the two layouts is a free permute.

Adding a block type is one class here (or in any module imported before the config is built)::

    @register_block("X")
    class MyBlock(Block):
        tokens_last = False  # True: forward takes and returns (B, H, W, C) tokens instead of NCHW

        def __init__(self, dim_in, dim_out, stride, grid, config, drop_path):
            super().__init__(dim_in, dim_out, stride, grid, config, drop_path)
            ...

after which ``layout="CCXT"`` validates, builds, resizes (``set_grid``), recomputes under grad
checkpointing and wraps under FSDP (the ``fsdp.yaml`` preset names :class:`Block`). Settings of its own
go in a new :class:`coatnet.config.Section` dataclass (each field's range and role declared with
``coatnet.config.setting``), added as a field of :class:`coatnet.config.CoAtNetConfig`; the command line
and the checkpoint match pick it up from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import nn

from .attention import RelativeAttention
from .layers import (
    DropPath,
    LayerScale,
    Mlp,
    Pool2d,
    SqueezeExcite,
    make_activation,
    make_channel_norm,
)

if TYPE_CHECKING:
    from .config import CoAtNetConfig


class Block(nn.Module):
    """Base of every block a layout letter names; FSDP wraps each instance on its own.

    Every block takes the same arguments, so one stage class builds them all:
    ``dim_in``/``dim_out`` channels, ``stride`` (2 in the first block of a downsampling stage, else 1),
    ``grid`` its output (H, W), the whole ``config`` (a block reads its own section) and its ``drop_path`` rate.
    """

    letter: ClassVar[str] = ""  # set by register_block
    tokens_last: ClassVar[bool] = False  # True: forward takes and returns (B, H, W, C); False: NCHW

    def __init__(
        self, dim_in: int, dim_out: int, stride: int, grid: tuple[int, int], config: CoAtNetConfig, drop_path: float
    ) -> None:
        super().__init__()

    @classmethod
    def check_stage(cls, config: CoAtNetConfig, index: int) -> None:
        """Raise ValueError if ``config`` cannot build this block in stage ``index``; runs when a config is made."""

    def set_grid(self, grid: tuple[int, int]) -> None:
        """Follow a new input size (``CoAtNet.set_img_size``); blocks whose weights depend on the grid override it."""


BlockType = TypeVar("BlockType", bound=type[Block])
BLOCKS: dict[str, type[Block]] = {}  # layout letter -> block class


def register_block(letter: str) -> Callable[[BlockType], BlockType]:
    """Class decorator: make ``letter`` a layout letter that builds this :class:`Block` subclass."""
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"a layout letter is one letter, got {letter!r}")

    def wrap(cls: BlockType) -> BlockType:
        if not (isinstance(cls, type) and issubclass(cls, Block)):
            raise TypeError(f"register_block({letter!r}) takes a subclass of coatnet.blocks.Block, got {cls!r}")
        if BLOCKS.get(letter, cls) is not cls:
            raise ValueError(f"layout letter {letter!r} is already {BLOCKS[letter].__name__}; pick another letter")
        cls.letter = letter
        BLOCKS[letter] = cls
        return cls

    return wrap


class ConvShortcut(nn.Module):
    """Shortcut of a downsampling block: pool, then a 1x1 projection when the width changes."""

    def __init__(self, dim_in: int, dim_out: int, pool: str, bias: bool) -> None:
        super().__init__()
        self.pool = Pool2d(pool)
        self.proj = nn.Conv2d(dim_in, dim_out, 1, bias=bias) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


@register_block("C")
class MBConvBlock(Block):
    """Pre-norm inverted bottleneck: BN -> 1x1 expand -> 3x3 depthwise -> SE -> 1x1 project. Settings: ``conv``."""

    def __init__(
        self, dim_in: int, dim_out: int, stride: int, grid: tuple[int, int], config: CoAtNetConfig, drop_path: float
    ) -> None:
        super().__init__(dim_in, dim_out, stride, grid, config, drop_path)
        cfg, pool = config.conv, config.pool
        if stride == 1 and dim_in != dim_out:
            raise ValueError(f"an MBConv block without downsampling keeps its width ({dim_in} != {dim_out})")
        mid = int((dim_out if cfg.expand_from == "output" else dim_in) * cfg.expand_ratio)
        se_base = dim_out if cfg.expand_from == "output" else mid
        self.shortcut = ConvShortcut(dim_in, dim_out, pool, cfg.output_bias) if stride > 1 else nn.Identity()
        self.pre_norm = nn.BatchNorm2d(dim_in, eps=cfg.norm_eps)
        self.pre_act = make_activation(cfg.act) if cfg.pre_norm_act else nn.Identity()
        self.pool = Pool2d(cfg.stride_pool or pool) if (stride > 1 and cfg.stride_at == "pool") else nn.Identity()
        self.conv_expand = nn.Conv2d(dim_in, mid, 1, stride=stride if cfg.stride_at == "1x1" else 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid, eps=cfg.norm_eps)
        self.act1 = make_activation(cfg.act)
        self.conv_dw = nn.Conv2d(
            mid, mid, 3, stride=stride if cfg.stride_at == "dw" else 1, padding=1, groups=mid, bias=False
        )
        se = SqueezeExcite(mid, int(se_base * cfg.se_ratio), cfg.se_act)
        self.se_early = se if cfg.se_early else nn.Identity()
        self.norm2 = nn.BatchNorm2d(mid, eps=cfg.norm_eps)
        self.act2 = make_activation(cfg.act)
        self.se = nn.Identity() if cfg.se_early else se
        self.conv_project = nn.Conv2d(mid, dim_out, 1, bias=cfg.output_bias)
        self.drop_path = DropPath(drop_path)

    @classmethod
    def check_stage(cls, config: CoAtNetConfig, index: int) -> None:
        if config.stem.patch_size:
            raise ValueError("a patch stem (ViT-REL) is followed by Transformer stages only: use layout 'T...'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.pool(self.pre_act(self.pre_norm(x)))
        x = self.act1(self.norm1(self.conv_expand(x)))
        x = self.se_early(self.conv_dw(x))
        x = self.se(self.act2(self.norm2(x)))
        return shortcut + self.drop_path(self.conv_project(x))


def _pool_tokens(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D pool to (B, H, W, C) tokens."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register_block("T")
class TransformerBlock(Block):
    """x <- Proj(Pool(x)) + Attention(Pool(Norm(x))); x <- x + FFN(Norm(x)), on (B, H, W, C) tokens.

    Settings: ``transformer``. The relative-position bias is sized for ``grid``.
    """

    tokens_last = True

    def __init__(
        self, dim_in: int, dim_out: int, stride: int, grid: tuple[int, int], config: CoAtNetConfig, drop_path: float
    ) -> None:
        super().__init__(dim_in, dim_out, stride, grid, config, drop_path)
        cfg, pool = config.transformer, config.pool
        if stride == 1 and dim_in != dim_out:
            raise ValueError(f"a Transformer block without downsampling keeps its width ({dim_in} != {dim_out})")
        self.downsample = stride > 1
        self.pool = Pool2d(pool) if self.downsample else nn.Identity()
        self.shortcut_proj = nn.Linear(dim_in, dim_out, bias=cfg.shortcut_bias) if dim_in != dim_out else nn.Identity()
        self.norm1 = make_channel_norm(cfg.norm, dim_in, cfg.norm_eps)
        dim_attn = dim_out if cfg.attn_width_from == "output" else dim_in
        self.attn = RelativeAttention(
            dim_in,
            dim_attn,
            dim_out,
            cfg.head_dim,
            grid,
            form=cfg.attention,
            rel_pos=cfg.rel_pos,
            rel_pos_mlp_dim=cfg.rel_pos_mlp_dim,
            rel_pos_mlp_dropout=cfg.rel_pos_mlp_dropout,
        )
        self.ls1 = LayerScale(dim_out, cfg.layer_scale) if cfg.layer_scale else nn.Identity()
        self.norm2 = make_channel_norm(cfg.norm, dim_out, cfg.norm_eps)
        self.mlp = Mlp(dim_out, int(dim_out * cfg.mlp_ratio), cfg.act)
        self.ls2 = LayerScale(dim_out, cfg.layer_scale) if cfg.layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path)

    @classmethod
    def check_stage(cls, config: CoAtNetConfig, index: int) -> None:
        width, head_dim = config.widths[index], config.transformer.head_dim
        if width % head_dim:
            raise ValueError(f"Transformer width {width} is not a multiple of head_dim {head_dim}")

    def set_grid(self, grid: tuple[int, int]) -> None:
        self.attn.set_grid(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C_in) -> (B, H', W', C_out)."""
        shortcut = x
        x = self.norm1(x)
        if self.downsample:
            shortcut = _pool_tokens(self.pool, shortcut)
            x = _pool_tokens(self.pool, x)
        shortcut = self.shortcut_proj(shortcut)
        batch, height, width, channels = x.shape
        attended = self.attn(x.reshape(batch, height * width, channels)).view(batch, height, width, -1)
        x = shortcut + self.drop_path(self.ls1(attended))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
