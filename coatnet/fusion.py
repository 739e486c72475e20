"""Inference-time BatchNorm folding.

In eval mode a BatchNorm is a fixed per-channel affine map, so it can be merged into the convolution
or Linear layer next to it: the same function with fewer memory-bound passes over the activations.
The stem's BatchNorm, all three of each MBConv block's, and a Transformer block's BatchNorms (with
``transformer.norm="batchnorm"``) fold away. A BatchNorm stays where folding would change the result:
after an activation (``conv.pre_norm_act``), before a max pool, or around an early squeeze-excite.

The folded copy is for inference and export only: it has no batch statistics to train with.

Each module type folds by its own rule (``FOLD_RULES``). A new block type with BatchNorms of its own adds one
with ``@register_fold(MyBlock)``, built from ``fold_after`` (a BatchNorm after a layer) and ``fold_before`` (one
before it); until it does, ``fold_batchnorm`` leaves its BatchNorms and says so.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .blocks import Block, MBConvBlock, Pool2d, TransformerBlock
from .model import CoAtNet, ConvStem

_AFFINE_COMMUTING_POOLS = ("avg2", "avg")  # averages (no zero padding counted) commute with a per-channel affine map
FoldRule = TypeVar("FoldRule", bound=Callable[..., None])
FOLD_RULES: dict[type[nn.Module], Callable[[nn.Module], None]] = {}  # module type (exactly) -> its folding rule


def register_fold(module_type: type[nn.Module]) -> Callable[[FoldRule], FoldRule]:
    """Decorator: ``rule(module)`` folds, in place, the BatchNorms of each module of exactly ``module_type`` in the
    copy ``fold_batchnorm`` makes (a subclass may compute differently, so it registers its own rule)."""

    def add(rule: FoldRule) -> FoldRule:
        FOLD_RULES[module_type] = rule
        return rule

    return add


def fold_batchnorm(model: CoAtNet) -> CoAtNet:
    """An eval-mode copy of ``model`` with its BatchNorms folded into the adjacent layers.

    >>> fast = fold_batchnorm(model)  # same logits as model.eval(), up to float rounding
    """
    folded = copy.deepcopy(model).eval().requires_grad_(False)
    without_rule = set()
    for module in folded.modules():
        rule = FOLD_RULES.get(type(module))
        if rule is not None:
            rule(module)
        elif isinstance(module, Block) and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()
        ):
            without_rule.add(type(module).__name__)
    if without_rule:
        warnings.warn(
            f"fold_batchnorm has no rule for {', '.join(sorted(without_rule))}: its BatchNorms stay (same logits, "
            "less speed). Add one with @coatnet.fusion.register_fold(<the block class>).",
            stacklevel=2,
        )
    return folded


@register_fold(ConvStem)
def _fold_stem(stem: ConvStem) -> None:
    fold_after(stem.conv1, stem.norm1)
    stem.norm1 = nn.Identity()


@register_fold(MBConvBlock)
def _fold_mbconv(block: MBConvBlock) -> None:
    if isinstance(block.pre_act, nn.Identity) and _commutes_with_affine(block.pool):
        fold_before(block.pre_norm, block.conv_expand)
        block.pre_norm = nn.Identity()
    fold_after(block.conv_expand, block.norm1)
    block.norm1 = nn.Identity()
    if isinstance(block.se_early, nn.Identity):
        fold_after(block.conv_dw, block.norm2)
        block.norm2 = nn.Identity()


@register_fold(TransformerBlock)
def _fold_transformer(block: TransformerBlock) -> None:
    if isinstance(block.norm1, nn.BatchNorm2d) and _commutes_with_affine(block.pool):
        fold_before(block.norm1, block.attn.qkv)
        block.norm1 = nn.Identity()
    if isinstance(block.norm2, nn.BatchNorm2d):
        fold_before(block.norm2, block.mlp.fc1)
        block.norm2 = nn.Identity()


def _commutes_with_affine(pool: nn.Module) -> bool:
    return isinstance(pool, nn.Identity) or (isinstance(pool, Pool2d) and pool.kind in _AFFINE_COMMUTING_POOLS)


def _affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with norm(x) = scale * x + shift per channel in eval mode, in float64."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f"{norm} keeps no running statistics: its output depends on the batch, so it cannot be folded")
    scale = torch.rsqrt(_float64(norm.running_var) + norm.eps)
    if norm.weight is not None:
        scale = scale * _float64(norm.weight)
    shift = -_float64(norm.running_mean) * scale
    if norm.bias is not None:
        shift = shift + _float64(norm.bias)
    return scale, shift


def _float64(tensor: torch.Tensor) -> torch.Tensor:
    """A float64 copy on the CPU: some devices (Apple's MPS) have no float64."""
    return tensor.detach().to(device="cpu", dtype=torch.float64)


def fold_after(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """norm(conv(x)) -> conv'(x): scale each output channel's filter, shift its bias."""
    scale, shift = _affine(norm)
    weight = _float64(conv.weight) * scale.view(-1, *[1] * (conv.weight.ndim - 1))
    bias = shift if conv.bias is None else _float64(conv.bias) * scale + shift
    _assign(conv, weight, bias)


def fold_before(norm: nn.BatchNorm2d, layer: nn.Conv2d | nn.Linear) -> None:
    """layer(norm(x)) -> layer'(x) for a Linear, or a convolution without zero padding."""
    if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or any(p != 0 for p in layer.padding)):
        raise ValueError(f"cannot fold a BatchNorm into the input of {layer}: zero padding would be shifted too")
    scale, shift = _affine(norm)
    per_input = (1, -1, *[1] * (layer.weight.ndim - 2))
    weight = _float64(layer.weight)
    bias = (weight * shift.view(per_input)).flatten(1).sum(1)
    if layer.bias is not None:
        bias = bias + _float64(layer.bias)
    _assign(layer, weight * scale.view(per_input), bias)


def _assign(layer: nn.Conv2d | nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    like = {"dtype": layer.weight.dtype, "device": layer.weight.device}
    layer.weight = nn.Parameter(weight.to(**like), requires_grad=False)
    layer.bias = nn.Parameter(bias.to(**like), requires_grad=False)
