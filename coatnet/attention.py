"""Global relative attention (CoAtNet eq. 3) and its relative-position bias.

The bias w[i - j] depends only on the 2-D offset between query i and key j on the H x W grid, so
one head needs (2H - 1)(2W - 1) values. They are gathered into a dense (heads, N, N) tensor once
per forward, which lets ``scaled_dot_product_attention`` add it as a contiguous ``attn_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


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


def resize_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a ((2H-1)(2W-1), heads) table; the extreme offsets map onto each other."""
    old_shape = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    new_shape = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    if table.shape[0] != old_shape[0] * old_shape[1]:
        raise ValueError(f"table has {table.shape[0]} rows, expected {old_shape[0] * old_shape[1]} for grid {old_grid}")
    if old_shape == new_shape:
        return table.clone()
    # einops names the (dy, dx) offset grid that the table's rows flatten, row-major.
    image = rearrange(table, "(dy dx) heads -> 1 heads dy dx", dy=old_shape[0]).float()
    resized = F.interpolate(image, size=new_shape, mode="bicubic", align_corners=True)
    return rearrange(resized, "1 heads dy dx -> (dy dx) heads").contiguous().to(table.dtype)


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
