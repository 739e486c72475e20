"""Attention weights of one query token, rebuilt from a ``RelativeAttention`` layer's input tokens.

The layer runs ``scaled_dot_product_attention``, whose fused kernels never materialise the
probabilities, so for pictures they are recomputed from the same weights, for a few images only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from coatnet.blocks import RelativeAttention


def centre_query(grid: tuple[int, int]) -> int:
    """Row-major index of the grid's centre token (on even sides, the lower-right of the middle four)."""
    return (grid[0] // 2) * grid[1] + grid[1] // 2


def query_attention(module: RelativeAttention, x: Tensor, query: int | None = None) -> Tensor:
    """(B, heads, N) weights that token ``query`` (default: the grid centre) gives to every key.

    ``x`` is the layer's (B, N, C) input. Pre-softmax form (the paper): softmax_j(q.k_j / sqrt(d) + w[i-j]),
    each row sums to 1. Post-softmax form: softmax_j(q.k_j / sqrt(d)) + w[i-j], the coefficients that
    multiply v there, so rows need not sum to 1 and may be negative. Float32, no autocast, no autograd,
    whatever precision the run uses.
    """
    grid = module.rel_pos.grid
    query = centre_query(grid) if query is None else query
    batch, tokens, _ = x.shape
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        bias = module.qkv.bias.float() if module.qkv.bias is not None else None
        qkv = F.linear(x.float(), module.qkv.weight.float(), bias)
        q, k, _ = qkv.view(batch, tokens, 3, module.heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = torch.einsum("bhd,bhnd->bhn", q[:, :, query], k) * module.head_dim**-0.5
        position = module.bias().float()[:, query]  # (heads, N): w[query - j]
        if module.pre_softmax:
            return (logits + position).softmax(dim=-1)
        return logits.softmax(dim=-1) + position
