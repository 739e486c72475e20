"""Crash-safe checkpoint files, and ``--ckpt_path last`` that finds the previous run's checkpoint.

A checkpoint write that is killed half-way (SLURM's SIGKILL after the grace period, a full disk,
a node failure) must never leave a truncated ``last.ckpt`` behind: that file is exactly the one a
requeued job resumes from. ``AtomicCheckpointIO`` therefore writes the whole file under a temporary
name in the same directory, forces it to disk and only then renames it over the target; a rename
within one file system is atomic, so readers see either the old or the new checkpoint.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from coatnet.convert import CheckpointError, first_line

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
    """``torch.save`` to ``path`` so that ``path`` is at all times either absent, the old file or the complete new one."""
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
    :class:`~coatnet.convert.CheckpointError` naming the file when it is missing, truncated,
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


def version_folder(version: int | str | None) -> str | None:
    """The folder name a TensorBoard or CSV logger gives ``version`` (None: not chosen yet)."""
    return None if version is None else version if isinstance(version, str) else f"version_{version}"


def last_checkpoint_under(run_dir: Path, version: str | None = None) -> str | None:
    """The newest ``last*.ckpt`` in ``run_dir/<version>/checkpoints/`` (any version when None), or None.

    Lightning resolves ``ckpt_path="last"`` only inside the checkpoint folder of the *current* logger
    version, which is a fresh, empty ``version_N`` for every new process, so a plain restart would
    silently train from scratch.
    """
    return newest_file(run_dir.glob(f"{version or '*'}/checkpoints/last*.ckpt"))


def newest_file(paths: Iterable[Path]) -> str | None:
    """The most recently written of ``paths`` that is a complete file (no write in progress), or None."""
    found = [p for p in paths if p.is_file() and not p.name.endswith(PARTIAL_SUFFIX)]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def logger_run(trainer: Trainer) -> tuple[Path, str | None] | None:
    """(``<save_dir>/<name>``, the version folder the config fixed or None) of the first logger; None where
    ``ModelCheckpoint`` has an explicit ``dirpath`` (Lightning already looks there) or there is no logger."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.dirpath is not None or not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
    return Path(save_dir) / str(logger.name), version_folder(getattr(logger, "_version", None))


def resolve_ckpt_path(trainer: Trainer, ckpt_path: str | None, fresh_start: bool) -> str | None:
    """``ckpt_path`` with ``"last"`` replaced by the newest ``last.ckpt`` of the run (of its version when the
    config fixes one). Without one, ``fit`` (``fresh_start``) starts from scratch; evaluation refuses."""
    if ckpt_path != "last" or (run := logger_run(trainer)) is None:
        return ckpt_path
    run_dir, version = run
    found = last_checkpoint_under(run_dir, version)
    where = run_dir / version if version else run_dir
    if found is None and not fresh_start:
        raise CheckpointError(f"--ckpt_path last: no last.ckpt under {where}; pass a checkpoint file")
    if found is None:
        rank_zero_info(f"--ckpt_path last: no last.ckpt under {where} yet, starting fresh")
    return found


def continue_run_folder(trainer: Trainer, ckpt_path: str | None) -> None:
    """Resume a fit from a version folder's ``last*.ckpt`` in that folder, not in a new ``version_N``.

    The run then keeps one TensorBoard history and one checkpoint folder across SLURM requeues, and
    ``ModelCheckpoint`` keeps its best score and top-k files (it drops them when its folder changes).
    Applies to a TensorBoard or CSV logger whose version the config leaves open. A fit from any other
    checkpoint (an earlier epoch, to branch off) gets a new version folder, so the run it came from
    keeps its ``last.ckpt`` and curves.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    if not ckpt_path or not isinstance(logger, TensorBoardLogger | CSVLogger) or logger._version is not None:
        return
    checkpoint = Path(ckpt_path).resolve()
    run_dir = (Path(logger.save_dir) / str(logger.name)).resolve()
    if not checkpoint.name.startswith("last") or checkpoint.parent.name != "checkpoints":
        return
    if checkpoint.parent.parent.parent != run_dir:
        return
    version = checkpoint.parent.parent.name
    number = version.removeprefix("version_")
    logger._version = int(number) if number.isdigit() and version != number else version
