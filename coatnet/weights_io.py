"""Reading torch (``.pth/.pt/.bin/.ckpt``) and ``.safetensors`` files, with errors that name the file and the fix.

Torch files are loaded with ``weights_only=True``: tensors and plain containers, never pickled code.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch
from torch import Tensor

from .errors import CheckpointError, CheckpointNotFoundError, first_line

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
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
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
