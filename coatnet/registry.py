"""Named CoAtNet variants and the factory that builds them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

from .config import (
    CoAtNetConfig,
    ConvConfig,
    HeadConfig,
    StemConfig,
    TransformerConfig,
    apply_overrides,
)
from .features import CoAtNetFeatures
from .model import CoAtNet

_VARIANTS: dict[str, Callable[[], CoAtNetConfig]] = {}


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
    """The config of a named variant with overrides applied (see :func:`coatnet.config.apply_overrides`)."""
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


def _paper(depths: tuple[int, ...], widths: tuple[int, ...], stem: int) -> CoAtNetConfig:
    """Paper layout C-C-T-T with a pre-logits head, as timm's coatnet_N_224."""
    return CoAtNetConfig(depths=depths, widths=widths, stem=StemConfig(widths=(stem, stem)))


# The paper's table lists S0 too; its two stem convolutions are not counted in ``depths``.
@register_variant("coatnet_0")
def _coatnet_0() -> CoAtNetConfig:
    return _paper((2, 3, 5, 2), (96, 192, 384, 768), 64)


@register_variant("coatnet_1")
def _coatnet_1() -> CoAtNetConfig:
    return _paper((2, 6, 14, 2), (96, 192, 384, 768), 64)


@register_variant("coatnet_2")
def _coatnet_2() -> CoAtNetConfig:
    return _paper((2, 6, 14, 2), (128, 256, 512, 1024), 128)


@register_variant("coatnet_3")
def _coatnet_3() -> CoAtNetConfig:
    return _paper((2, 6, 14, 2), (192, 384, 768, 1536), 192)


@register_variant("coatnet_4")
def _coatnet_4() -> CoAtNetConfig:
    return _paper((2, 12, 28, 2), (192, 384, 768, 1536), 192)


@register_variant("coatnet_nano")
def _coatnet_nano() -> CoAtNetConfig:
    """A 1.5M-parameter paper-style CoAtNet for CPU tests and quick CIFAR runs (not in the paper)."""
    return CoAtNetConfig(
        depths=(1, 2, 2, 1), widths=(32, 64, 128, 256), stem=StemConfig(widths=(32, 32)), img_size=(32, 32)
    )


@register_variant("vit_rel")
def _vit_rel() -> CoAtNetConfig:
    """The paper's ViT-REL ablation: 16x16 patch stem, then relative-attention blocks only.

    ViT-S-like width and depth (about CoAtNet-0's size), with heads of 32 channels as in CoAtNet.
    """
    return CoAtNetConfig(
        depths=(12,),
        widths=(384,),
        layout="T",
        stem=StemConfig(widths=(384, 384), patch_size=16),
        head=HeadConfig(kind="pre_logits"),
    )


def _rw(
    depths: tuple[int, ...],
    widths: tuple[int, ...],
    stem: tuple[int, int],
    conv: dict[str, Any],
    transformer: dict[str, Any] | None = None,
    pool: str = "avg2",
) -> CoAtNetConfig:
    """timm's own ``_rw`` CoAtNets (the ones with ImageNet weights), expressed as config only."""
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


def _named_constructor(name: str) -> Callable[..., CoAtNet]:
    def build(**overrides: Any) -> CoAtNet:
        return create_model(name, **overrides)

    build.__name__ = name
    build.__doc__ = f"Build ``{name}``; keyword arguments override config fields."
    return build


coatnet_0 = _named_constructor("coatnet_0")
coatnet_1 = _named_constructor("coatnet_1")
coatnet_2 = _named_constructor("coatnet_2")
coatnet_3 = _named_constructor("coatnet_3")
coatnet_4 = _named_constructor("coatnet_4")
coatnet_nano = _named_constructor("coatnet_nano")


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
