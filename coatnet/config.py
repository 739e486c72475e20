"""Configuration dataclasses that describe a whole CoAtNet, and the paper's named variants.

Every architectural choice of the paper (and of timm's ``_rw`` variants, so that their
weights can be imported) is a field here, so an ablation is a config change, not a code change.
A field declares its allowed range and its role once, with :func:`setting`; the checks
(:mod:`coatnet.config_checks`), the command line's parse-time ranges and the checkpoint-match rules
(through :mod:`coatnet.config_io`) all read that metadata.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .config_checks import RANGE_TESTS, check_fields, check_network

Pool = Literal["avg2", "max2", "avg", "max"]
Activation = Literal["gelu", "gelu_tanh", "silu", "relu", "tanh"]  # the names coatnet.blocks.make_activation knows

REGULARISATION = "regularisation"  # role: changes how the network trains, not the function its weights compute


def setting(default: Any, *, range: str | None = None, role: str | None = None) -> Any:  # noqa: A002
    """A config field with its allowed ``range`` (a key of ``RANGE_TESTS``) and ``role`` declared once."""
    if range is not None and range not in RANGE_TESTS:
        raise ValueError(f"range {range!r} is not one of {sorted(RANGE_TESTS)}")
    if role not in (None, REGULARISATION):
        raise ValueError(f"role {role!r} is not None or {REGULARISATION!r}")
    metadata = {key: value for key, value in (("range", range), ("role", role)) if value is not None}
    return field(default=default, metadata=metadata)


class Section:
    """Base of the config sections (``stem``, ``conv``, ...): checks every field's type and range when made."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class StemConfig(Section):
    """S0: two 3x3 convolutions (the paper), or a ViT-style patch embedding (ViT-REL)."""

    widths: tuple[int, int] = setting((64, 64), range="> 0")
    stride: int = setting(2, range="> 0")  # 1 keeps full resolution in S0, useful for 32x32 CIFAR images
    patch_size: int = setting(0, range=">= 0")  # > 0 replaces the conv stem with a patchify conv of this size
    bias: bool = False

    section: ClassVar[str] = "stem"


@dataclass(frozen=True)
class ConvConfig(Section):
    """MBConv blocks (pre-norm, inverted bottleneck, squeeze-excitation)."""

    expand_ratio: float = setting(4.0, range="> 0")
    expand_from: Literal["output", "input"] = "output"  # paper: output width; timm _rw: input
    stride_at: Literal["dw", "1x1", "pool"] = "dw"  # dw: later paper variant; 1x1: paper v1
    act: Activation = "gelu"
    pre_norm_act: bool = False  # timm _rw coat models apply the activation after the pre-norm
    output_bias: bool = True  # bias of the last 1x1 conv and of the shortcut projection
    se_ratio: float = setting(0.25, range="> 0")  # of the output width (or the expanded width with expand_from=input)
    se_act: Activation = "silu"
    se_early: bool = False  # SE before the second norm (timm _rw)
    stride_pool: Pool | None = None  # pool of the residual branch with stride_at="pool"; None: the model's pool
    norm_eps: float = 1e-5

    section: ClassVar[str] = "conv"


@dataclass(frozen=True)
class TransformerConfig(Section):
    """Transformer blocks with global relative attention."""

    head_dim: int = setting(32, range="> 0")
    attention: Literal["pre_softmax", "post_softmax"] = "pre_softmax"
    rel_pos: Literal["table", "mlp"] = "table"  # mlp: timm's rmlp log-coordinate MLP
    rel_pos_mlp_dim: int = setting(512, range="> 0")
    rel_pos_mlp_dropout: float = setting(0.125, range="[0, 1)", role=REGULARISATION)
    attn_width_from: Literal["output", "input"] = "output"  # paper: heads from the output width
    mlp_ratio: float = setting(4.0, range="> 0")
    act: Activation = "gelu"
    norm: Literal["layernorm", "batchnorm"] = "layernorm"
    norm_eps: float = 1e-6
    shortcut_bias: bool = True
    layer_scale: float | None = None  # initial LayerScale value, None disables it

    section: ClassVar[str] = "transformer"


@dataclass(frozen=True)
class HeadConfig(Section):
    """Classifier head.

    pre_logits: pool -> LayerNorm -> Linear(d, hidden) -> tanh -> Linear (paper-like, timm coatnet_N_224).
    norm_pool: final norm on the feature map -> pool -> Linear (timm _rw models).
    pool: pool -> Linear.
    """

    kind: Literal["pre_logits", "norm_pool", "pool"] = "pre_logits"
    hidden: int = setting(0, range=">= 0")  # pre_logits width, 0 means the last stage width
    dropout: float = setting(0.0, range="[0, 1)", role=REGULARISATION)

    section: ClassVar[str] = "head"


@dataclass(frozen=True)
class CoAtNetConfig:
    """The whole network. Stages S1..S4 are described by ``depths``, ``widths`` and ``layout``."""

    depths: tuple[int, ...] = setting((2, 3, 5, 2), range="> 0")
    widths: tuple[int, ...] = setting((96, 192, 384, 768), range="> 0")
    layout: str = "CCTT"  # one letter per stage, a key of coatnet.blocks.BLOCKS: C = MBConv, T = Transformer
    stem: StemConfig = field(default_factory=StemConfig)
    conv: ConvConfig = field(default_factory=ConvConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    pool: Pool = "avg2"  # spatial downsampling in shortcuts and attention
    img_size: tuple[int, int] = (224, 224)
    in_chans: int = setting(3, range="> 0")
    num_classes: int = setting(1000, range=">= 0")
    drop_path_rate: float = setting(0.0, range="[0, 1)", role=REGULARISATION)

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        size = self.img_size
        if isinstance(size, numbers.Integral):
            size = (size, size)
        if isinstance(size, (tuple, list)) and all(isinstance(s, numbers.Integral) for s in size):
            size = tuple(int(s) for s in size)
        object.__setattr__(self, "img_size", size)
        for name in ("depths", "widths"):  # YAML and JSON give lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check_network(self)

    @property
    def stem_stride(self) -> int:
        return self.stem.patch_size or self.stem.stride

    @property
    def stage_strides(self) -> tuple[int, ...]:
        """Every stage halves the resolution in its first block, except a stage right after a patch stem."""
        return tuple(1 if (i == 0 and self.stem.patch_size) else 2 for i in range(len(self.depths)))

    @property
    def total_stride(self) -> int:
        stride = self.stem_stride
        for s in self.stage_strides:
            stride *= s
        return stride

    def feature_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of the output of each stage S1..S4."""
        h, w = (s // self.stem_stride for s in self.img_size)
        sizes = []
        for s in self.stage_strides:
            h, w = h // s, w // s
            sizes.append((h, w))
        return sizes


# The paper's Table 3 variants (its S0, the two stem convolutions, is not counted in depths), its ViT-REL
# ablation and a nano size for CPU runs. create_model's registry (coatnet.model) starts from these; timm's
# variants are in coatnet.timm_variants.
def _paper(depths: tuple[int, ...], widths: tuple[int, ...], stem: int) -> Callable[[], CoAtNetConfig]:
    """Paper layout C-C-T-T with a pre-logits head, as timm's coatnet_N_224."""
    return lambda: CoAtNetConfig(depths=depths, widths=widths, stem=StemConfig(widths=(stem, stem)))


def _coatnet_nano() -> CoAtNetConfig:
    """A 1.5M-parameter paper-style CoAtNet for CPU tests and quick CIFAR runs (not in the paper)."""
    return CoAtNetConfig(
        depths=(1, 2, 2, 1), widths=(32, 64, 128, 256), stem=StemConfig(widths=(32, 32)), img_size=(32, 32)
    )


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


PAPER_VARIANTS: dict[str, Callable[[], CoAtNetConfig]] = {
    "coatnet_0": _paper((2, 3, 5, 2), (96, 192, 384, 768), 64),
    "coatnet_1": _paper((2, 6, 14, 2), (96, 192, 384, 768), 64),
    "coatnet_2": _paper((2, 6, 14, 2), (128, 256, 512, 1024), 128),
    "coatnet_3": _paper((2, 6, 14, 2), (192, 384, 768, 1536), 192),
    "coatnet_4": _paper((2, 12, 28, 2), (192, 384, 768, 1536), 192),
    "coatnet_nano": _coatnet_nano,
    "vit_rel": _vit_rel,
}
