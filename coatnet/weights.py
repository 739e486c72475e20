"""Weights files: reading any of them, loading them into a CoAtNet, and this project's portable format.

"Checkpoint" elsewhere means Lightning's ``.ckpt``; this module reads those too, for their network's weights.
A weights file (``.pth``/``.pt`` via ``torch.save``, or ``.safetensors``) of this project holds everything
needed to rebuild and use a model without its training code::

    {"format": "coatnet-weights/1", "variant": "coatnet_0_rw", "config": {...},
     "state_dict": {...}, "preprocessing": {"mean", "std", "interpolation", "crop_pct"},
     "source": {...}, "class_names": [...] or None}

In ``.safetensors`` the tensors are the file's tensors and the rest is JSON in its metadata. Wherever a path
is taken, ``hf-hub:org/name`` names a Hugging Face Hub repository of timm's format or of this one
(:mod:`coatnet.hub`). Torch files are loaded with ``weights_only=True``: tensors and plain containers,
never pickled code.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from .blocks import RelativeAttention
from .config import CoAtNetConfig
from .config_io import config_from_dict, config_to_dict
from .errors import CheckpointError, CheckpointNotFoundError, first_line
from .hub import WEIGHTS_FILES, hub_config, hub_weights_file, is_hub_name, repo_and_revision
from .model import CoAtNet
from .rel_pos_resize import resize_table

# ----------------------------------------------------------------------------- reading files


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# How torch's weights-only unpickler names a global it refuses to import (an allowlisted module or a blocked one).
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL ([\w.]+) (?:was not an allowed global|whose module)")
T = TypeVar("T")


def existing_file(path: str | Path) -> Path:
    """``path``, or an error saying what is there instead of a weights file and what to pass."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", *TORCH_SUFFIXES))[:3]
        example = f", e.g. {path / inside[0]}" if inside else ""
        raise CheckpointError(f"{path} is a folder, not a weights file: pass a file inside it{example}")
    if not path.is_file():
        raise CheckpointNotFoundError(f"weights file not found: {path}; check the path (and the working directory)")
    return path


def read_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` and an error that names the file (``mmap``: read tensors lazily)."""
    path = existing_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch.load raises many types for a file that is not a checkpoint
        raise _load_error(path, err) from None


def _load_error(path: Path, err: Exception) -> CheckpointError:
    """Pickled objects the weights-only unpickler refused (never imported or run), else an unreadable file."""
    refused = _REFUSED_GLOBAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
    if refused is not None:
        return CheckpointError(
            f"{path} holds pickled Python objects ({refused.group(1)}) that weights_only loading refuses, so "
            "nothing in it was run: pass a file of tensors (a state dict, a checkpoint of this project, or the "
            "output of `python -m coatnet convert`). Only if you trust its source: load it yourself with "
            "torch.load(..., weights_only=False), torch.save its state dict, and convert or pass that file"
        )
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint ({first_line(err)}): it may be truncated (an "
        "interrupted copy or download) or another kind of file; copy it again or pass another file"
    )


def _from_safetensors(path: str | Path, read: Callable[[Any], T]) -> T:
    """``read(handle)`` of an open ``.safetensors`` file, with an error that names the file and the fix."""
    from safetensors import SafetensorError, safe_open

    path = existing_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return read(handle)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({first_line(err)}): it may be truncated (an "
            "interrupted copy or download) or another kind of file; copy or convert it again"
        ) from None


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and string metadata of a ``.safetensors`` file."""
    return _from_safetensors(path, lambda handle: ({k: handle.get_tensor(k) for k in handle.keys()}, _metadata(handle)))


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """String metadata of a ``.safetensors`` file, without reading its tensors."""
    return _from_safetensors(path, _metadata)


def _metadata(handle: Any) -> dict[str, str]:
    return dict(handle.metadata() or {})


def unwrap_state_dict(obj: Any, path: str | Path) -> dict[str, Tensor]:
    """The tensor dict inside a loaded checkpoint: itself, or under ``state_dict`` / ``model``."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        found = f"keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path} holds no state dict of tensors (found {found})")
    state_dict = dict(obj)
    if all(k.startswith("module.") for k in state_dict):  # saved from a DDP-wrapped model
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.pth/.pt/.bin/.ckpt`` (weights only, no pickled code) or ``.safetensors``."""
    path = existing_file(path)
    if path.suffix == ".safetensors":
        return unwrap_state_dict(read_safetensors(path)[0], path)
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported file type {path.suffix!r}; expected .safetensors or {', '.join(TORCH_SUFFIXES)}"
        )
    return unwrap_state_dict(read_torch_file(path), path)


# ----------------------------------------------------------------------------- loading into a model


# Non-persistent buffers that build_uninitialised knows how to recompute.
_DERIVED_BUFFERS = (".attn.index", ".attn.rel_pos.coords")


def _short_list(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_dict_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> list[str]:
    """A few lines describing missing, unexpected and reshaped keys; empty when they fit."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    lines = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", reshaped)):
        if keys:
            lines.append(f"  {len(keys)} {label}: {_short_list(keys)}")
    return lines


def load_mapped(model: CoAtNet, mapped: Mapping[str, Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with a short, counted report instead of torch's full dump.

    ``what`` names source and target for the message, e.g. "timm state dict for coatnet_0_rw".
    """
    problems = state_dict_mismatch(model.state_dict(), mapped)
    if problems:
        cfg = model.config
        header = f"{what} does not fit (img {cfg.img_size[0]}x{cfg.img_size[1]}, {cfg.num_classes} classes):"
        raise CheckpointError("\n".join([header, *problems]))
    model.load_state_dict(mapped, strict=True)


def build_uninitialised(config: CoAtNetConfig) -> CoAtNet:
    """A model whose weights are about to be loaded: skips the random init (seconds for CoAtNet-3/4).

    Parameters are left uninitialised; the derived buffers (relative-position indices and
    coordinates) are recomputed. A model with other non-persistent buffers is built normally.
    """
    with torch.device("meta"):
        model = CoAtNet(config)
    derived = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    if not all(name.endswith(_DERIVED_BUFFERS) for name in derived):
        return CoAtNet(config)
    model.to_empty(device="cpu")
    for module in model.modules():
        if isinstance(module, RelativeAttention):
            module.set_grid(module.rel_pos.grid)
    return model


# ----------------------------------------------------------------------------- this project's format: saving


FORMAT = "coatnet-weights/1"
PREPROCESSING_KEYS = ("mean", "std", "interpolation", "crop_pct")
WEIGHTS_SUFFIXES = (".safetensors", ".pth")
PACKED_WEIGHTS = WEIGHTS_FILES[0]  # the weights file of a packed folder, as of a Hub repository
_CLASSIFIER = ("head.fc.weight", "head.fc.bias")


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


# ----------------------------------------------------------------------------- reading weights


def read_weights_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(state dict, project metadata or None) of a weights file, Lightning checkpoint or raw state dict;
    of ``hf-hub:`` repositories, the weights in this project's format (timm's converted)."""
    if is_hub_name(path):
        return _read_hub(str(path))
    path = packed_file(path)
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
    return {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}


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
    """Eval preprocessing (mean, std, interpolation, crop_pct) a weights file or Hub repository records, else None."""
    if is_hub_name(path):
        config = checked_hub_config(str(path))
        if is_timm_config(config):  # timm's config.json states it: no need to download and convert the weights yet
            from .convert import timm_config_preprocessing

            return timm_config_preprocessing(config)
        path = hub_weights_file(str(path))
    path = packed_file(path)
    if path.suffix == ".safetensors":  # metadata only: the tensors are not read
        metadata = read_safetensors_metadata(path)
        meta = json.loads(metadata["meta"]) if metadata.get("format") == FORMAT else None
    else:
        meta = read_weights_file(path)[1]
    return _check_preprocessing(meta["preprocessing"]) if meta else None


def packed_file(path: str | Path) -> Path:
    """A folder holding ``model.safetensors`` (``export.py --format safetensors``, a Hub download) stands for it."""
    path = Path(path)
    packed = path / PACKED_WEIGHTS
    return packed if path.is_dir() and packed.is_file() else path


def is_timm_config(config: Mapping[str, Any]) -> bool:
    """Whether a Hub repository's config.json is timm's (it names an architecture)."""
    return "architecture" in config


def checked_hub_config(name: str) -> dict[str, Any]:
    """The repository's config.json, refused before any weights are downloaded unless this project can load them."""
    config = hub_config(name)
    if is_timm_config(config):
        from .convert import variant_for_timm_name

        variant_for_timm_name(str(config["architecture"]))  # an unsupported timm architecture: a one-line error
    elif config.get("format") != FORMAT:
        raise CheckpointError(
            f"{name} is neither a timm repository (config.json names an architecture) nor one of this project "
            f"({FORMAT!r}, written by `export.py --format safetensors`)"
        )
    return config


def _read_hub(name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Weights and metadata of a Hub repository; timm's are converted to this project's layout on the way."""
    config = checked_hub_config(name)
    path = hub_weights_file(name)
    if not is_timm_config(config):
        state_dict, meta = read_weights_file(path)
        if meta is None:
            raise CheckpointError(
                f"{name}: {path.name} has no {FORMAT} metadata; write the repository with "
                "`export.py --format safetensors`"
            )
        return state_dict, meta
    from .convert import (
        convert_timm_state_dict,
        timm_config_name,
        timm_config_preprocessing,
        variant_for_timm_name,
    )

    timm_name = timm_config_name(config)
    model = convert_timm_state_dict(load_state_dict_file(path), timm_name, progress=True)
    labels = config.get("label_names")
    meta = {
        "format": FORMAT,
        "variant": variant_for_timm_name(timm_name),
        "config": config_to_dict(model.config),
        "preprocessing": timm_config_preprocessing(config),
        # The snapshot folder is named by the commit.
        "source": {"hf_hub": repo_and_revision(name)[0], "revision": path.parent.name, "timm_name": timm_name},
        "class_names": list(labels) if isinstance(labels, list) and len(labels) == model.config.num_classes else None,
    }
    return model.state_dict(), meta


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

    Accepts a weights file, a Lightning checkpoint of this project, a raw state dict, a timm
    CoAtNet state dict, or an ``hf-hub:`` repository of timm's format or this project's. Relative-position
    tables are resized to the model's grid; the classifier is kept as initialised when its shape differs.
    Any other difference is an error.
    """
    from .convert import (
        map_timm_state_dict,  # convert builds its models with this module's loaders
    )

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
    from .convert import matching_variant

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
