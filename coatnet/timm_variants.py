"""timm's own ``_rw`` CoAtNets (the ones with ImageNet weights), expressed as config only; not in the paper.

Importing :mod:`coatnet` registers them (``coatnet/__init__.py`` imports this module), so ``list_models()``
lists them and ``python -m coatnet convert`` can load their timm weights.
"""

from __future__ import annotations

from typing import Any

from .config import CoAtNetConfig, ConvConfig, HeadConfig, StemConfig, TransformerConfig
from .model import register_variant


def _rw(
    depths: tuple[int, ...],
    widths: tuple[int, ...],
    stem: tuple[int, int],
    conv: dict[str, Any],
    transformer: dict[str, Any] | None = None,
    pool: str = "avg2",
) -> CoAtNetConfig:
    """timm's ``_rw`` defaults (widths from a block's input, SiLU, no output bias, pooled stride, norm-pool head)
    with the given ``conv`` and ``transformer`` fields on top."""
    conv_defaults = dict(expand_from="input", act="silu", output_bias=False, stride_at="pool")
    tf_defaults = dict(attn_width_from="input")
    return CoAtNetConfig(
        depths=depths,
        widths=widths,
        stem=StemConfig(widths=stem),
        conv=ConvConfig(**{**conv_defaults, **conv}),
        transformer=TransformerConfig(**{**tf_defaults, **(transformer or {})}),
        head=HeadConfig(kind="norm_pool"),
        pool=pool,  # type: ignore[arg-type]
    )


_COAT_RW = dict(pre_norm_act=True, se_act="relu")  # timm's _rw_coat_cfg
_MAX_RW = dict(pre_norm_act=False, se_act="silu", output_bias=True)  # timm's _rw_max_cfg as used by nano


@register_variant("coatnet_nano_rw")
def _coatnet_nano_rw() -> CoAtNetConfig:
    return _rw((3, 4, 6, 3), (64, 128, 256, 512), (32, 64), _MAX_RW)


@register_variant("coatnet_0_rw")
def _coatnet_0_rw() -> CoAtNetConfig:
    return _rw((2, 3, 7, 2), (96, 192, 384, 768), (32, 64), {**_COAT_RW, "se_early": True}, {"shortcut_bias": False})


@register_variant("coatnet_1_rw")
def _coatnet_1_rw() -> CoAtNetConfig:
    return _rw(
        (2, 6, 14, 2),
        (96, 192, 384, 768),
        (32, 64),
        {**_COAT_RW, "se_early": True, "stride_at": "dw"},
        {"shortcut_bias": False},
    )


@register_variant("coatnet_2_rw")
def _coatnet_2_rw() -> CoAtNetConfig:
    return _rw((2, 6, 14, 2), (128, 256, 512, 1024), (64, 128), {**_COAT_RW, "se_act": "silu", "stride_at": "dw"})


@register_variant("coatnet_3_rw")
def _coatnet_3_rw() -> CoAtNetConfig:
    return _rw(
        (2, 6, 14, 2),
        (192, 384, 768, 1536),
        (96, 192),
        {**_COAT_RW, "se_act": "silu", "stride_at": "dw"},
        {"layer_scale": 1e-6},
    )


@register_variant("coatnet_bn_0_rw")
def _coatnet_bn_0_rw() -> CoAtNetConfig:
    return _rw(
        (2, 3, 7, 2),
        (96, 192, 384, 768),
        (32, 64),
        {**_COAT_RW, "se_early": True, "stride_at": "dw"},
        {"shortcut_bias": False, "norm": "batchnorm"},
    )


@register_variant("coatnet_rmlp_nano_rw")
def _coatnet_rmlp_nano_rw() -> CoAtNetConfig:
    return _rw(
        (3, 4, 6, 3),
        (64, 128, 256, 512),
        (32, 64),
        {**_MAX_RW, "stride_at": "dw"},
        {"rel_pos": "mlp", "rel_pos_mlp_dim": 384},
    )


@register_variant("coatnet_rmlp_1_rw")
def _coatnet_rmlp_1_rw() -> CoAtNetConfig:
    return _rw(
        (2, 6, 14, 2),
        (96, 192, 384, 768),
        (32, 64),
        {**_COAT_RW, "se_early": True, "stride_pool": "avg2"},
        {"shortcut_bias": False, "rel_pos": "mlp", "rel_pos_mlp_dim": 384},
        pool="max",
    )


@register_variant("coatnet_rmlp_2_rw")
def _coatnet_rmlp_2_rw() -> CoAtNetConfig:
    return _rw(
        (2, 6, 14, 2),
        (128, 256, 512, 1024),
        (64, 128),
        {**_COAT_RW, "se_act": "silu", "stride_at": "dw"},
        {"layer_scale": 1e-6, "rel_pos": "mlp"},
    )


@register_variant("coatnet_rmlp_1_rw2")
def _coatnet_rmlp_1_rw2() -> CoAtNetConfig:
    """timm's second rmlp-1 (ImageNet-12k weights): dw stride, SE after the norm, 512-wide rel-pos MLP."""
    return _rw(
        (2, 6, 14, 2),
        (96, 192, 384, 768),
        (32, 64),
        {**_COAT_RW, "stride_at": "dw"},
        {"rel_pos": "mlp", "rel_pos_mlp_dim": 512},
    )
