"""Import timm's CoAtNet weights (``timm/models/maxxvit.py``) into :class:`coatnet.CoAtNet`.

Works on plain state dicts, so timm is not needed to convert a downloaded file. The two models
compute the same function; only names and a few tensor layouts differ:

* keys: ``stages.i.blocks.j`` -> ``stages.i.j``, MBConv convs and the head are renamed;
* Transformer blocks use 1x1 convs in timm and Linear layers here, (O, I, 1, 1) -> (O, I);
* timm lays the qkv output channels out head by head ([head][q|k|v][dim]), we as [q|k|v][head][dim].
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from torch import Tensor
from tqdm import tqdm

from .config import CoAtNetConfig
from .errors import CheckpointError
from .model import CoAtNet, get_config, list_models
from .timm_api import IMAGENET_MEAN, IMAGENET_STD
from .weights import build_uninitialised, load_mapped, state_dict_mismatch

# timm architecture name (as in timm.list_models) -> our registered variant.
TIMM_TO_VARIANT: dict[str, str] = {
    **{f"coatnet_{i}_224": f"coatnet_{i}" for i in range(5)},
    "coatnet_nano_rw_224": "coatnet_nano_rw",
    "coatnet_0_rw_224": "coatnet_0_rw",
    "coatnet_1_rw_224": "coatnet_1_rw",
    "coatnet_2_rw_224": "coatnet_2_rw",
    "coatnet_3_rw_224": "coatnet_3_rw",
    "coatnet_bn_0_rw_224": "coatnet_bn_0_rw",
    "coatnet_rmlp_nano_rw_224": "coatnet_rmlp_nano_rw",
    "coatnet_rmlp_1_rw_224": "coatnet_rmlp_1_rw",
    "coatnet_rmlp_1_rw2_224": "coatnet_rmlp_1_rw2",
    "coatnet_rmlp_2_rw_224": "coatnet_rmlp_2_rw",
    "coatnet_rmlp_2_rw_384": "coatnet_rmlp_2_rw",
}

# Renames inside one block, applied to the key after ``stages.i.j.``; first match wins.
_MBCONV_RENAMES = (
    ("shortcut.expand.", "shortcut.proj."),
    ("conv1_1x1.", "conv_expand."),
    ("conv2_kxk.", "conv_dw."),
    ("conv3_1x1.", "conv_project."),
)
_TRANSFORMER_RENAMES = (
    ("shortcut.expand.", "shortcut_proj."),
    ("norm1.norm.", "norm1."),
    ("attn.rel_pos.relative_position_bias_table", "attn.rel_pos.table"),
    ("attn.rel_pos.mlp.", "attn.rel_pos."),
)
_TOP_RENAMES = (
    ("norm.", "head.final_norm."),  # rw models: norm on the last feature map
    ("head.norm.", "head.pool_norm."),  # paper models: norm after pooling
    ("head.pre_logits.fc.", "head.pre_logits.0."),
)
_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")


# ----------------------------------------------------------------------------- names


def _strip_tag(timm_name: str) -> str:
    """``coatnet_0_rw_224.sw_in1k`` -> ``coatnet_0_rw_224`` (also drops an ``hf-hub:timm/`` prefix)."""
    return timm_name.split("/")[-1].split(".")[0]


def variant_for_timm_name(timm_name: str) -> str:
    """Our variant for a timm name, with or without ``_224`` and a pretrained tag."""
    base = _strip_tag(timm_name)
    for candidate in (base, f"{base}_224"):
        if candidate in TIMM_TO_VARIANT:
            return TIMM_TO_VARIANT[candidate]
    known = ", ".join(sorted(TIMM_TO_VARIANT))
    raise CheckpointError(f"no CoAtNet variant for timm model {timm_name!r}; supported: {known}")


def timm_img_size(timm_name: str) -> int | None:
    """Input side encoded in a timm name (``..._384`` -> 384), None when the name has none."""
    match = re.search(r"_(\d{3})$", _strip_tag(timm_name))
    return int(match.group(1)) if match else None


def timm_preprocessing(timm_name: str) -> dict[str, Any]:
    """Eval preprocessing timm's weights were trained with (their pretrained cfg), by name.

    timm's own rw weights use mean = std = 0.5, except bn_0_rw (ImageNet statistics); timm has no
    weights for the paper models, so those get the ImageNet defaults of this project's recipes.
    """
    base = _strip_tag(timm_name)
    variant = variant_for_timm_name(timm_name)
    paper = not variant.endswith(("_rw", "_rw2"))
    imagenet_stats = paper or variant == "coatnet_bn_0_rw"
    crop_pct = 0.875 if paper else 0.9 if "nano" in variant else 0.95
    if base.endswith("_384"):
        crop_pct = 1.0
    return {
        "mean": IMAGENET_MEAN if imagenet_stats else (0.5, 0.5, 0.5),
        "std": IMAGENET_STD if imagenet_stats else (0.5, 0.5, 0.5),
        "interpolation": "bicubic",
        "crop_pct": crop_pct,
    }


def timm_config_name(config: Mapping[str, Any]) -> str:
    """``coatnet_0_rw_224.sw_in1k`` from a timm ``config.json`` (architecture and pretrained tag)."""
    tag = (config.get("pretrained_cfg") or {}).get("tag")
    return f"{config['architecture']}.{tag}" if tag else str(config["architecture"])


def timm_config_preprocessing(config: Mapping[str, Any]) -> dict[str, Any]:
    """Eval preprocessing a timm ``config.json`` states (its pretrained cfg), by name where it states none."""
    stated = config.get("pretrained_cfg") or {}
    defaults = timm_preprocessing(str(config["architecture"]))
    return {key: tuple(stated[key]) if key in ("mean", "std") and key in stated else stated.get(key, default)
            for key, default in defaults.items()}  # fmt: skip


# ----------------------------------------------------------------------------- mapping


def _rename(rest: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _qkv_head_first_to_ours(tensor: Tensor, head_dim: int) -> Tensor:
    """Rows [head][q|k|v][dim] -> [q|k|v][head][dim] (qkv weight or bias)."""
    if tensor.shape[0] % (3 * head_dim):  # not this variant's attention: left for the shape check to report
        return tensor
    # einops states both row layouts, which reshape-transpose-reshape would leave to be worked out.
    return rearrange(tensor, "(heads qkv dim) ... -> (qkv heads dim) ...", qkv=3, dim=head_dim)


def _map_block_tensor(rest: str, tensor: Tensor, layout: str, head_dim: int) -> tuple[str, Tensor]:
    """Key and tensor of one block parameter, MBConv (``C``) or Transformer (``T``)."""
    if layout == "C":
        return _rename(rest, _MBCONV_RENAMES), tensor
    rest = _rename(rest, _TRANSFORMER_RENAMES)
    if tensor.ndim == 4 and tensor.shape[2:] == (1, 1):  # 1x1 conv -> Linear
        tensor = tensor.flatten(1)
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        tensor = _qkv_head_first_to_ours(tensor, head_dim)
    return rest, tensor


def map_timm_state_dict(state_dict: Mapping[str, Tensor], config: CoAtNetConfig) -> dict[str, Tensor]:
    """Rename timm keys to ours and convert layouts; unknown keys pass through unchanged."""
    mapped: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match and int(match.group(1)) < len(config.layout):
            stage, block, rest = int(match.group(1)), match.group(2), match.group(3)
            rest, tensor = _map_block_tensor(rest, tensor, config.layout[stage], config.transformer.head_dim)
            mapped[f"stages.{stage}.{block}.{rest}"] = tensor
        else:
            mapped[_rename(key, _TOP_RENAMES)] = tensor
    return mapped


def _stage_stride(config: CoAtNetConfig, stage: int) -> int:
    return config.stem_stride * math.prod(config.stage_strides[: stage + 1])


def _as_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def _table_rows(size: tuple[int, int], stride: int) -> int:
    """Rows of a relative-position table on the grid an input of ``size`` gives at ``stride``."""
    height, width = (side // stride for side in size)
    return (2 * height - 1) * (2 * width - 1)


def infer_img_size(
    state_dict: Mapping[str, Tensor], config: CoAtNetConfig, img_size: int | tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """Input size the first relative-position table was made for; None when there is none.

    A table's row count fixes a square grid, but not a non-square one (H x W and W x H give the same
    count): ``img_size`` (H, W), when its grid fits the table, is taken as the weights' size.
    """
    given = None if img_size is None else _as_pair(img_size)
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if not (match and key.endswith("relative_position_bias_table")):
            continue
        rows, stride = tensor.shape[0], _stage_stride(config, int(match.group(1)))
        if given and _table_rows(given, stride) == rows:
            return given
        side = (math.isqrt(rows) + 1) // 2
        if (2 * side - 1) ** 2 != rows:
            tried = f"; {given[0]}x{given[1]} gives {_table_rows(given, stride)}" if given else ""
            raise CheckpointError(
                f"{key} has {rows} rows, a non-square grid's{tried}: pass the input size the weights were "
                "made for, img_size=(H, W) (`--img-size H W`)"
            )
        return (side * stride, side * stride)
    return None


def infer_num_classes(state_dict: Mapping[str, Tensor]) -> int:
    """Classes of the classifier in a timm or project state dict (0 when it has none)."""
    weight = state_dict.get("head.fc.weight")
    return int(weight.shape[0]) if weight is not None else 0


# ----------------------------------------------------------------------------- converting


def convert_timm_state_dict(
    state_dict: Mapping[str, Tensor], variant: str, progress: bool = False, **overrides: Any
) -> CoAtNet:
    """Our model for ``variant`` holding the weights of a timm state dict.

    ``variant`` is ours (``coatnet_0_rw``) or a timm name. Loading uses the checkpoint's classes and
    image size: its tables', or for rmlp weights (no tables) the timm name's, else the variant's.
    An ``img_size`` or ``num_classes`` override then resizes the tables or resets the classifier.
    ``progress``: a bar on stderr when converting takes over a second (seconds for the large variants).
    """
    with tqdm(total=3, desc=f"converting {variant}", unit="step", delay=1.0, disable=not progress) as bar:
        return _convert(state_dict, variant, bar, **overrides)


def _convert(state_dict: Mapping[str, Tensor], variant: str, bar: tqdm, **overrides: Any) -> CoAtNet:
    name_size = None
    if variant not in list_models():
        name_size = timm_img_size(variant)  # the size a timm name states, for rmlp weights (no tables)
        variant = variant_for_timm_name(variant)
    img_size = overrides.pop("img_size", None)
    num_classes = overrides.pop("num_classes", None)
    base = get_config(variant, **overrides)
    native = infer_img_size(state_dict, base, img_size) or img_size or name_size or base.img_size
    model = build_uninitialised(
        get_config(variant, img_size=native, num_classes=infer_num_classes(state_dict), **overrides)
    )
    bar.update()
    mapped = map_timm_state_dict(state_dict, model.config)
    bar.update()
    load_mapped(model, mapped, f"timm state dict for {variant}")
    bar.update()
    if img_size is not None and get_config(variant, img_size=img_size).img_size != model.img_size:
        model.set_img_size(img_size)
    if num_classes is not None and num_classes != model.config.num_classes:
        model.reset_classifier(num_classes)
    return model


def detect_variant(state_dict: Mapping[str, Tensor], img_size: int | tuple[int, int] | None = None) -> str:
    """The registered variant whose parameter names and shapes a timm state dict matches exactly.

    ``img_size``: the input size of weights with non-square tables (see :func:`infer_img_size`).
    """
    variant = matching_variant(state_dict, img_size)
    if variant is None:
        raise CheckpointError(
            f"no registered CoAtNet variant matches this state dict (stage depths {_stage_depths(state_dict)})"
        )
    return variant


def matching_variant(state_dict: Mapping[str, Tensor], img_size: int | tuple[int, int] | None = None) -> str | None:
    """:func:`detect_variant`, or None when no variant matches (for hints in other errors)."""
    num_classes = infer_num_classes(state_dict)
    for variant in list_models():
        config = get_config(variant)
        if _signature(config) != _state_dict_signature(state_dict):
            continue  # cheap filter before building the candidate on the meta device
        size = infer_img_size(state_dict, config, img_size) or 224
        config = get_config(variant, num_classes=num_classes, img_size=size)
        with torch.device("meta"):
            expected = CoAtNet(config).state_dict()
        if not state_dict_mismatch(expected, map_timm_state_dict(state_dict, config)):
            return variant
    return None


def _signature(config: CoAtNetConfig) -> tuple[Any, ...]:
    return config.layout, config.depths, config.stem.widths, config.transformer.rel_pos


def _state_dict_signature(state_dict: Mapping[str, Tensor]) -> tuple[Any, ...]:
    """What :func:`_signature` reads from a config; every timm CoAtNet is C-C-T-T."""
    convs = [state_dict.get(f"stem.{name}.weight") for name in ("conv1", "conv2")]
    stem = tuple(int(w.shape[0]) for w in convs if w is not None)
    rel_pos = "mlp" if any(".rel_pos.mlp." in k for k in state_dict) else "table"
    return "CCTT", _stage_depths(state_dict), stem, rel_pos


def _stage_depths(state_dict: Mapping[str, Tensor]) -> tuple[int, ...]:
    blocks: dict[int, set[str]] = {}
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(match.group(2))
    return tuple(len(blocks[i]) for i in sorted(blocks))


def from_timm_model(model: torch.nn.Module, **overrides: Any) -> CoAtNet:
    """Convert a live timm CoAtNet (needs no timm import: reads its name, input size and weights).

    ``overrides`` go to :func:`convert_timm_state_dict`, e.g. ``depths`` for a model that timm built
    with its config overlaid.
    """
    architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
    if not architecture:
        raise CheckpointError(f"{type(model).__name__} has no timm pretrained_cfg naming its architecture")
    img_size = tuple(getattr(model, "img_size", ())) or None
    return convert_timm_state_dict(model.state_dict(), architecture, **{"img_size": img_size, **overrides})
