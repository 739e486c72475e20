"""The blocks a layout letter names, in one table (``BLOCKS``), and the layers and attention they are made of.

MBConv blocks (``C``) work on NCHW tensors (channels_last memory friendly); Transformer blocks (``T``) on
(B, H, W, C) tokens, so LayerNorm and Linear run on contiguous channels and, with channels_last inputs, the
hand-over between the two layouts is a free permute. Each block owns its downsampling path.

A new block type is one :class:`Block` subclass under ``@register_block("X")``, here or in any module imported
before the config is built (``tests/unit/test_block_registry.py`` trains a toy one). ``layout="CCXT"`` then
validates, builds, resizes (``set_grid``), recomputes under grad checkpointing and wraps under FSDP
(``configs/trainer/fsdp.yaml`` names :class:`Block`). Settings of its own go in a new ``Section`` dataclass of
:mod:`coatnet.config` (fields declared with ``setting``), added as a field of ``CoAtNetConfig``; the command
line and the checkpoint match pick it up from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .rel_pos_resize import resize_table

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


# Layers the blocks share.
_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """Activation module by name (gelu, gelu_tanh, silu, relu, tanh)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, rescaling the survivors."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.empty(mask_shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class LayerScale(nn.Module):
    """Per-channel learnable scale on the last dimension (CaiT); used by some timm variants."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class BatchNormLast(nn.BatchNorm2d):
    """BatchNorm over the last dimension of an (B, H, W, C) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def make_channel_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """A norm over the channel (last) dimension of channels-last tokens."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "batchnorm":
        return BatchNormLast(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose 'layernorm' or 'batchnorm'")


class Pool2d(nn.Module):
    """The downsampling pool: avg2/max2 (2x2, stride 2) or avg/max (3x3, stride 2, padding 1)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ("avg2", "max2", "avg", "max"):
            raise ValueError(f"unknown pool {kind!r}; choose avg2, max2, avg or max")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg2":
            return F.avg_pool2d(x, 2)
        if self.kind == "max2":
            return F.max_pool2d(x, 2)
        if self.kind == "avg":
            return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return F.max_pool2d(x, 3, stride=2, padding=1)

    def extra_repr(self) -> str:
        return self.kind


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (NCHW)."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = make_activation(act)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class Mlp(nn.Module):
    """The Transformer feed-forward network on channels-last tokens."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# Global relative attention (CoAtNet eq. 3). The bias w[i - j] depends only on the 2-D offset between query i
# and key j on the H x W grid, so one head needs (2H - 1)(2W - 1) values. They are gathered into a dense
# (heads, N, N) tensor once per forward, which lets ``scaled_dot_product_attention`` add it as an ``attn_mask``.
def relative_position_index(height: int, width: int) -> torch.Tensor:
    """Flat (N*N,) index into a (2H-1)(2W-1) table for every (query, key) pair, N = H*W.

    Query i at (yi, xi) and key j at (yj, xj) read row (yi - yj + H - 1) * (2W - 1) + (xi - xj + W - 1).
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + height - 1
    dx = xs[:, None] - xs[None, :] + width - 1
    return (dy * (2 * width - 1) + dx).flatten()


def relative_log_coords(height: int, width: int) -> torch.Tensor:
    """((2H-1)(2W-1), 2) signed log offsets, the input of the rel-pos MLP (timm's 'cr' mode)."""
    dy = torch.arange(-(height - 1), height, dtype=torch.float32)
    dx = torch.arange(-(width - 1), width, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.sign(grid) * torch.log1p(grid.abs())


class RelativePositionTable(nn.Module):
    """One learnable scalar per head and relative offset (the paper's w)."""

    def __init__(self, grid: tuple[int, int], heads: int) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.table = nn.Parameter(torch.empty((2 * grid[0] - 1) * (2 * grid[1] - 1), heads))
        nn.init.trunc_normal_(self.table, std=0.02)

    def bias_table(self) -> torch.Tensor:
        return self.table

    def resize(self, grid: tuple[int, int]) -> None:
        """Interpolate the table to a new grid (fine-tuning at another resolution)."""
        new = resize_table(self.table.detach(), self.grid, tuple(grid))
        self.table = nn.Parameter(new)
        self.grid = tuple(grid)


class RelativePositionMlp(nn.Module):
    """Bias produced by a small MLP over log-spaced offsets (timm's ``rmlp`` models)."""

    def __init__(self, grid: tuple[int, int], heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.fc1 = nn.Linear(2, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, heads)
        self.register_buffer("coords", relative_log_coords(*grid), persistent=False)

    def bias_table(self) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(self.coords))))

    def resize(self, grid: tuple[int, int]) -> None:
        """The MLP is resolution-free: only the offsets it is evaluated at change."""
        self.grid = tuple(grid)
        self.coords = relative_log_coords(*grid).to(self.fc1.weight.device)


class RelativeAttention(nn.Module):
    """Multi-head self-attention over all H*W tokens with a relative-position bias.

    pre_softmax (paper):  softmax_j(q_i.k_j / sqrt(d) + w[i-j]) v_j
    post_softmax (ablation): (softmax_j(q_i.k_j / sqrt(d)) + w[i-j]) v_j
    """

    def __init__(
        self,
        dim_in: int,
        dim_attn: int,
        dim_out: int,
        head_dim: int,
        grid: tuple[int, int],
        form: str = "pre_softmax",
        rel_pos: str = "table",
        rel_pos_mlp_dim: int = 512,
        rel_pos_mlp_dropout: float = 0.125,
    ) -> None:
        super().__init__()
        if form not in ("pre_softmax", "post_softmax"):
            raise ValueError(f"unknown attention form {form!r}; choose 'pre_softmax' or 'post_softmax'")
        self.heads = dim_attn // head_dim
        self.head_dim = head_dim
        self.pre_softmax = form == "pre_softmax"
        self.qkv = nn.Linear(dim_in, 3 * dim_attn)
        if rel_pos == "table":
            self.rel_pos: nn.Module = RelativePositionTable(grid, self.heads)
        elif rel_pos == "mlp":
            self.rel_pos = RelativePositionMlp(grid, self.heads, rel_pos_mlp_dim, rel_pos_mlp_dropout)
        else:
            raise ValueError(f"unknown rel_pos {rel_pos!r}; choose 'table' or 'mlp'")
        self.tokens = grid[0] * grid[1]
        self.register_buffer("index", relative_position_index(*grid), persistent=False)
        self.proj = nn.Linear(dim_attn, dim_out)

    def bias(self) -> torch.Tensor:
        """Dense, contiguous (heads, N, N) bias: contiguity keeps SDPA's fused kernels usable when compiled."""
        return self.rel_pos.bias_table().t()[:, self.index].view(self.heads, self.tokens, self.tokens)

    def set_grid(self, grid: tuple[int, int]) -> None:
        self.rel_pos.resize(grid)
        self.tokens = grid[0] * grid[1]
        self.index = relative_position_index(*grid).to(self.index.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) tokens in row-major grid order."""
        batch, tokens, _ = x.shape
        # Channels [q|k|v][head][dim] -> (3, B, heads, N, dim); not einops, which adds ~4 us a call in eager.
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.bias().to(q.dtype)
        if self.pre_softmax:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        else:
            out = F.scaled_dot_product_attention(q, k, v) + torch.matmul(bias, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


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
