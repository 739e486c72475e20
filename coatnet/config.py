"""Configuration dataclasses that describe a whole CoAtNet.

Every architectural choice of the paper (and of timm's ``_rw`` variants, so that their
weights can be imported) is a field here, so an ablation is a config change, not a code change.
A field declares its allowed range and its role once, with :func:`setting`; the checks below, the
command line's parse-time ranges and the checkpoint-match rules all read that metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

Pool = Literal["avg2", "max2", "avg", "max"]
Activation = Literal["gelu", "gelu_tanh", "silu", "relu", "tanh"]  # the names coatnet.layers.make_activation knows

# Allowed ranges of numbers (each entry of a tuple), as the error messages and the command line write them.
RANGE_TESTS: dict[str, Callable[[Any], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "[0, 1]": lambda v: 0 <= v <= 1,
    "[0, 1)": lambda v: 0 <= v < 1,  # drop rates: 1 would drop everything
}
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
        _check_fields(self)


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
        object.__setattr__(self, "depths", _as_tuple(self.depths))
        object.__setattr__(self, "widths", _as_tuple(self.widths))
        _check_fields(self)
        self._validate()

    def _validate(self) -> None:
        if not self.layout:
            raise ValueError("layout is empty: give one letter per stage, e.g. layout='CCTT'")
        if not (len(self.depths) == len(self.widths) == len(self.layout)):
            raise ValueError(
                f"depths {self.depths}, widths {self.widths} and layout {self.layout!r} must have one entry per stage"
            )
        from .blocks import BLOCKS  # the table of layout letters (coatnet.blocks imports this module)

        unknown = sorted(set(self.layout) - set(BLOCKS))
        if unknown:
            known = ", ".join(f"{letter} ({block.__name__})" for letter, block in sorted(BLOCKS.items()))
            raise ValueError(
                f"layout {self.layout!r} has unknown letter(s) {''.join(unknown)}: the layout letters are {known}; "
                "add one with coatnet.blocks.register_block"
            )
        for index, letter in enumerate(self.layout):
            BLOCKS[letter].check_stage(self, index)
        stride = self.total_stride
        for side in self.img_size:
            if side <= 0 or side % stride:
                raise ValueError(
                    f"image size {self.img_size[0]}x{self.img_size[1]} is invalid: each side must be a "
                    f"positive multiple of {stride} (the network's total stride). Resize or crop the "
                    f"input, e.g. to {max(stride, round(side / stride) * stride)}."
                )

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


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


# The sections: every field of CoAtNetConfig whose type is a dataclass.
_NESTED: dict[str, type] = {
    item.name: _type_hints(CoAtNetConfig)[item.name]
    for item in dataclasses.fields(CoAtNetConfig)
    if dataclasses.is_dataclass(_type_hints(CoAtNetConfig)[item.name])
}


def field_paths(metadata_key: str, cls: type = CoAtNetConfig, prefix: str = "") -> dict[str, Any]:
    """``{"head.dropout": "[0, 1)", ...}``: the value of ``metadata_key`` (``range`` or ``role``) of every
    field that declares it, by dotted path, sections included."""
    found: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        hint = _type_hints(cls)[item.name]
        if dataclasses.is_dataclass(hint):
            found.update(field_paths(metadata_key, hint, f"{prefix}{item.name}."))
        elif metadata_key in item.metadata:
            found[prefix + item.name] = item.metadata[metadata_key]
    return found


def regularisation_fields() -> frozenset[str]:
    """Dotted paths of the fields whose role is regularisation (drop rates): training-only settings."""
    return frozenset(path for path, role in field_paths("role").items() if role == REGULARISATION)


_NOUNS = {int: "integer", float: "number", bool: "True or False", str: "string", type(None): "None"}


def _check_fields(config: Any) -> None:
    """Every field has its annotated type or Literal value, and every number (or tuple entry) the range
    its metadata declares: a wrong value would otherwise build a model that fails deep inside forward."""
    hints = _type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if not _matches(value, hints[item.name]):
            raise ValueError(f"{_name(config, item.name)}={value!r} is invalid: expected {_describe(hints[item.name])}")
    for item in dataclasses.fields(config):
        if "range" not in item.metadata:
            continue
        value, allowed = getattr(config, item.name), item.metadata["range"]
        entries = value if isinstance(value, tuple) else (value,)
        if not all(map(RANGE_TESTS[allowed], entries)):
            each = "each entry " if isinstance(value, tuple) else ""
            written = allowed if allowed.startswith(("<", ">")) else f"in {allowed}"
            raise ValueError(f"{_name(config, item.name)}={value!r} is invalid: {each}must be {written}")


def _name(config: Any, field_name: str) -> str:
    return f"{config.section}.{field_name}" if config.section else field_name


def _matches(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return any(isinstance(value, type(a)) and value == a for a in args)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        return f"a tuple of {count}{_describe(args[0])}s"
    return _NOUNS.get(hint, getattr(hint, "__name__", str(hint)))


def apply_overrides(config: CoAtNetConfig, **overrides: Any) -> CoAtNetConfig:
    """Return a copy of ``config`` with top-level fields replaced and nested dicts merged.

    ``apply_overrides(cfg, img_size=384, conv={"stride_at": "1x1"})`` changes one MBConv field and
    keeps the others, which is what a YAML config or a command line wants.
    """
    known = {f.name for f in dataclasses.fields(CoAtNetConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown CoAtNet config field(s) {sorted(unknown)}; valid fields: {sorted(known)}")
    updates: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in _NESTED and not isinstance(value, (dict, _NESTED[name])):
            raise ValueError(
                f"{name}={value!r} is invalid: {name} is a section, give a dict of its fields, e.g. "
                f"{name}={{'{dataclasses.fields(_NESTED[name])[0].name}': ...}}, or set one field: {name}.FIELD"
            )
        if name in _NESTED and isinstance(value, dict):
            current = getattr(config, name)
            nested_fields = {f.name for f in dataclasses.fields(current)}
            bad = set(value) - nested_fields
            if bad:
                raise ValueError(f"unknown {name} config field(s) {sorted(bad)}; valid: {sorted(nested_fields)}")
            value = dataclasses.replace(current, **{k: _as_tuple(v) for k, v in value.items()})
        updates[name] = _as_tuple(value)
    return dataclasses.replace(config, **updates)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def config_to_dict(config: CoAtNetConfig) -> dict[str, Any]:
    """Plain nested dict, for checkpoints and logs."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> CoAtNetConfig:
    """Inverse of :func:`config_to_dict`."""
    return apply_overrides(CoAtNetConfig(), **data)
