"""Small building blocks shared by the MBConv and Transformer blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
