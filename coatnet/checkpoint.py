"""This project's portable weights files, and loading weights to fine-tune from.

A weights file (``.pth``/``.pt`` via ``torch.save``, or ``.safetensors``) holds everything needed
to rebuild and use a model without this repository's training code::

    {"format": "coatnet-weights/1", "variant": "coatnet_0_rw", "config": {...},
     "state_dict": {...}, "preprocessing": {"mean", "std", "interpolation", "crop_pct"},
     "source": {...}, "class_names": [...] or None}

In ``.safetensors`` the tensors are the file's tensors and the rest is JSON in its metadata.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .attention import resize_table
from .config import CoAtNetConfig, config_from_dict, config_to_dict
from .convert import map_timm_state_dict, matching_variant
from .errors import CheckpointError
from .loading import build_uninitialised, load_mapped, state_dict_mismatch
from .model import CoAtNet
from .weights_io import read_safetensors, read_safetensors_metadata, read_torch_file, unwrap_state_dict

FORMAT = "coatnet-weights/1"
PREPROCESSING_KEYS = ("mean", "std", "interpolation", "crop_pct")
WEIGHTS_SUFFIXES = (".safetensors", ".pth")
_CLASSIFIER = ("head.fc.weight", "head.fc.bias")


# ----------------------------------------------------------------------------- saving


def _check_preprocessing(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """The four eval-preprocessing fields, with mean/std as float tuples."""
    missing = [k for k in PREPROCESSING_KEYS if k not in preprocessing]
    if missing:
        raise ValueError(f"preprocessing needs {', '.join(PREPROCESSING_KEYS)}; missing {', '.join(missing)}")
    return {
        "mean": tuple(float(v) for v in preprocessing["mean"]),
        "std": tuple(float(v) for v in preprocessing["std"]),
        "interpolation": str(preprocessing["interpolation"]),
        "crop_pct": float(preprocessing["crop_pct"]),
    }


def check_output_path(path: str | Path) -> Path:
    """``path`` if :func:`save_weights` can write it; checked up front, before a costly conversion."""
    path = Path(path)
    if path.suffix not in WEIGHTS_SUFFIXES:
        found = f"not {path.suffix!r}" if path.suffix else "the name has none"
        raise ValueError(
            f"cannot write {path}: a weights file ends in .safetensors or .pth ({found}), e.g. "
            f"{path.with_suffix('.safetensors')}"
        )
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: the folder {path.parent} does not exist; create it or choose another")
    return path


def save_weights(
    path: str | Path,
    model: CoAtNet,
    preprocessing: Mapping[str, Any],
    source: Mapping[str, Any] | str,
    class_names: list[str] | None = None,
    variant: str | None = None,
) -> Path:
    """Write a weights file atomically: a crash or a full disk never leaves a half-written file."""
    path = check_output_path(path)
    if class_names is not None and len(class_names) != model.config.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.config.num_classes} classes")
    meta = {
        "format": FORMAT,
        "variant": variant,
        "config": config_to_dict(model.config),
        "preprocessing": _check_preprocessing(preprocessing),
        "source": dict(source) if isinstance(source, Mapping) else {"description": str(source)},
        "class_names": list(class_names) if class_names is not None else None,
    }
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = tmp.stat().st_mode  # 0666 less the umask, as a plain open() gives
    except OSError as err:  # e.g. a read-only folder: name it, not the temporary file
        raise ValueError(f"cannot write {path}: {err.strerror} in {path.parent}; choose another folder") from None
    try:
        _write(tmp, path.suffix, meta, state_dict)
        os.chmod(tmp, mode)  # safetensors writes its file afresh with 0600, which would hide a shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write(tmp: Path, suffix: str, meta: dict[str, Any], state_dict: dict[str, Tensor]) -> None:
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta)})
    else:
        torch.save({**meta, "state_dict": state_dict}, tmp)
    with open(tmp, "rb") as handle:  # the bytes are on disk before the rename makes them visible
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- reading


def read_weights_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(state dict, project metadata or None) of a weights file, Lightning checkpoint or raw state dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        if metadata.get("format") == FORMAT:
            return tensors, json.loads(metadata["meta"])
        return unwrap_state_dict(tensors, path), None
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return dict(obj["state_dict"]), {k: v for k, v in obj.items() if k != "state_dict"}
    if isinstance(obj, Mapping) and isinstance(obj.get("format"), str):
        raise CheckpointError(f"{path} is in format {obj['format']!r}; this version reads {FORMAT!r}")
    return _from_lightning(unwrap_state_dict(obj, path)), None


def _from_lightning(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys of the network inside an ImageClassifier checkpoint (``model.``, ``_orig_mod.`` dropped)."""
    state_dict = {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}
    if not any(k.startswith("model.") for k in state_dict):
        return state_dict
    return {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}


def load_weights(path: str | Path) -> tuple[CoAtNet, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_weights`; returns it (in eval mode) and the metadata."""
    state_dict, meta = read_weights_file(path)
    if meta is None:
        raise CheckpointError(
            f"{path} is not a {FORMAT} file (a raw state dict or Lightning checkpoint has no config): "
            "build the model and use load_for_finetune, or convert it with `python -m coatnet convert`"
        )
    model = build_uninitialised(config_from_dict(meta["config"]))
    load_mapped(model, state_dict, f"{path}")
    meta["preprocessing"] = _check_preprocessing(meta["preprocessing"])
    return model.eval(), meta


def preprocessing_of(path: str | Path) -> dict[str, Any] | None:
    """Eval preprocessing (mean, std, interpolation, crop_pct) a weights file records, else None."""
    path = Path(path)
    if path.suffix == ".safetensors":  # metadata only: the tensors are not read
        metadata = read_safetensors_metadata(path)
        meta = json.loads(metadata["meta"]) if metadata.get("format") == FORMAT else None
    else:
        meta = read_weights_file(path)[1]
    return _check_preprocessing(meta["preprocessing"]) if meta else None


# ----------------------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneReport:
    """What :func:`load_for_finetune` did with each tensor of the target model."""

    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.resized) + len(self.reinitialised)
        lines = [f"initialised from {self.source}: {len(self.loaded) + len(self.resized)}/{total} tensors loaded"]
        if self.resized:
            lines.append(f"  {len(self.resized)} relative-position tables resized to the new grid")
        if self.reinitialised:
            lines.append(f"  re-initialised (new classes): {', '.join(self.reinitialised)}")
        if self.ignored:
            lines.append(f"  ignored (no such tensor in the model): {', '.join(self.ignored)}")
        return "\n".join(lines)


def _source_grids(state_dict: Mapping[str, Tensor], meta: dict[str, Any] | None) -> dict[int, tuple[int, int]]:
    """Feature grid of each stage in the source, from its config, else assuming square tables."""
    if meta is not None:
        return dict(enumerate(config_from_dict(meta["config"]).feature_sizes()))
    grids = {}
    for key, table in state_dict.items():
        if key.endswith("rel_pos.table"):
            side = (round(table.shape[0] ** 0.5) + 1) // 2
            grids[int(key.split(".")[1])] = (side, side)
    return grids


def _target_state(
    model: CoAtNet, source: dict[str, Tensor], grids: dict[int, tuple[int, int]], report: FinetuneReport
) -> dict[str, Tensor]:
    """The state dict to load: source tensors, resized tables, and the model's own new classifier."""
    target = model.state_dict()
    feature_sizes = model.config.feature_sizes()
    out: dict[str, Tensor] = {}
    for key, current in target.items():
        tensor = source.get(key)
        if tensor is None:
            continue  # reported as missing
        stage = int(key.split(".")[1]) if key.startswith("stages.") else -1
        if tensor.shape == current.shape:
            out[key] = tensor
            report.loaded.append(key)
        elif key.endswith("rel_pos.table") and stage in grids:
            out[key] = resize_table(tensor, grids[stage], feature_sizes[stage])
            report.resized.append(key)
        elif key in _CLASSIFIER:
            out[key] = current
            report.reinitialised.append(key)
        else:
            out[key] = tensor  # reported as a shape mismatch
    return out


def load_for_finetune(model: CoAtNet, path: str | Path) -> FinetuneReport:
    """Initialise an already-built model (any classes, any input size) from a file.

    Accepts a weights file, a Lightning checkpoint of this project, a raw state dict, or a timm
    CoAtNet state dict. Relative-position tables are resized to the model's grid; the classifier
    is kept as initialised when its shape differs. Any other difference is an error.
    """
    source, meta = read_weights_file(path)
    is_timm = any(key.startswith("stages.0.blocks.") for key in source)
    state_dict = map_timm_state_dict(source, model.config) if is_timm else source
    report = FinetuneReport(source=str(path))
    grids = _source_grids(state_dict, meta)
    out = _target_state(model, state_dict, grids, report)
    report.ignored = [k for k in state_dict if k not in out and k in _CLASSIFIER]
    unexpected = {k: v for k, v in state_dict.items() if k not in out and k not in _CLASSIFIER}
    problems = state_dict_mismatch(model.state_dict(), {**out, **unexpected})
    if problems:
        variant = _variant_held(source, meta)
        header = (
            f"{path} holds {variant} weights, which do not fit this model: use --model.model_name {variant} "
            "(and the model_overrides the weights were made with, if any):"
            if variant else f"{path} cannot initialise this model:"
        )  # fmt: skip
        raise CheckpointError("\n".join([header, *problems]))
    model.load_state_dict(out, strict=True)
    return report


def _variant_held(state_dict: Mapping[str, Tensor], meta: dict[str, Any] | None) -> str | None:
    """The variant a file's metadata names or, for timm weights, the one its tensors match; None if unknown."""
    return meta.get("variant") if meta is not None else matching_variant(state_dict)


def weights_summary(meta: Mapping[str, Any]) -> str:
    """One line for logs: variant, input size, classes and preprocessing of loaded weights."""
    config: CoAtNetConfig = config_from_dict(meta["config"])
    pre = meta["preprocessing"]
    return (
        f"{meta.get('variant') or 'CoAtNet'} {config.img_size[0]}x{config.img_size[1]}, "
        f"{config.num_classes} classes, mean={tuple(pre['mean'])} std={tuple(pre['std'])} "
        f"{pre['interpolation']} crop_pct={pre['crop_pct']}"
    )
