"""Crash-safe checkpoint files.

A checkpoint write that is killed half-way (SLURM's SIGKILL after the grace period, a full disk, a node
failure) must never leave a truncated ``last.ckpt`` behind: that file is exactly the one a requeued job
resumes from. ``AtomicCheckpointIO`` therefore writes the whole file under a temporary name in the same
directory, forces it to disk and only then renames it over the target; a rename within one file system is
atomic, so readers see either the old or the new checkpoint."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH

from coatnet.errors import CheckpointError, first_line

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """The temporary name a checkpoint is written under; a leftover one after a hard kill is safe to delete."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX only; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save`` to ``path`` so that ``path`` is at all times either absent, the old file or the complete
    new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and readable errors for unusable checkpoint files.

    Remote paths (``s3://`` ...) keep Lightning's fsspec transaction. Loading raises
    :class:`~coatnet.errors.CheckpointError` naming the file when it is missing, truncated,
    not a PyTorch file at all, or a bare weights file rather than a Lightning training checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        unreadable = (
            f"{path} is not a readable PyTorch checkpoint ({{reason}}). It may be truncated or a different kind of "
            "file; pass another one, e.g. last.ckpt or an epoch*.ckpt from the same folder"
        )
        # torch.save writes zip archives; a truncated one has lost its directory at the end of the file.
        if _is_local_file_protocol(path) and os.path.isfile(path) and not zipfile.is_zipfile(path):
            raise CheckpointError(unreadable.format(reason="not a zip archive"))
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} does not exist; check --ckpt_path") from None
        except IsADirectoryError:
            folder = f"{path} is a folder; --ckpt_path needs a .ckpt file, e.g. {path}/last.ckpt"
            raise CheckpointError(folder) from None
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as err:
            if "weights_only" in str(err):
                raise CheckpointError(
                    f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle "
                    f"({first_line(err)}); this project's checkpoints hold none: pass one written by its trainer"
                ) from None
            raise CheckpointError(unreadable.format(reason=first_line(err))) from None
        if not isinstance(checkpoint, dict) or not {"state_dict", "pytorch-lightning_version"} <= checkpoint.keys():
            raise CheckpointError(
                f"{path} is not a Lightning training checkpoint (model weights at most); --ckpt_path needs a .ckpt "
                "written by this trainer (last.ckpt, epoch*.ckpt). To start training from weights, pass them as "
                "--model.init_from instead"
            )
        return checkpoint
