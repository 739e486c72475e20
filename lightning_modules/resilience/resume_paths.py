"""Which checkpoint ``--ckpt_path last`` means, and the run folder a resumed fit continues in."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from coatnet.errors import CheckpointError
from lightning_modules.resilience.announce import announce
from lightning_modules.resilience.atomic_io import PARTIAL_SUFFIX


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


def newest_checkpoint_under(run_dir: Path, version: str | None = None) -> str | None:
    """The newest complete ``*.ckpt`` of any name there: what a run has left when its ``last.ckpt`` is gone."""
    return newest_file(run_dir.glob(f"{version or '*'}/checkpoints/*.ckpt"))


def resume_checkpoint_under(run_dir: Path, version: str | None = None) -> str | None:
    """What ``--ckpt_path last`` resumes from: the newest ``last*.ckpt``, else the newest other checkpoint,
    else None."""
    return last_checkpoint_under(run_dir, version) or newest_checkpoint_under(run_dir, version)


def is_complete(path: Path) -> bool:
    """A whole file, not one still (or never fully) written: torch.save writes zip archives, whose index is at
    the end."""
    return path.is_file() and not path.name.endswith(PARTIAL_SUFFIX) and zipfile.is_zipfile(path)


def newest_file(paths: Iterable[Path]) -> str | None:
    """The most recently written of ``paths`` that is a complete checkpoint file, or None."""
    found = [p for p in paths if is_complete(p)]
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
    config fixes one), or where that is gone (deleted, lost with a disk) by the run's newest other complete
    checkpoint, named on stderr. Without any, ``fit`` (``fresh_start``) starts from scratch; evaluation refuses."""
    if ckpt_path != "last" or (run := logger_run(trainer)) is None:
        return ckpt_path
    run_dir, version = run
    where = run_dir / version if version else run_dir
    if (found := last_checkpoint_under(run_dir, version)) is not None:
        return found
    if (found := newest_checkpoint_under(run_dir, version)) is not None:
        announce(f"--ckpt_path last: no complete last.ckpt under {where}; resuming from the newest checkpoint, {found}")
        return found
    if damaged := sorted(str(p) for p in run_dir.glob(f"{version or '*'}/checkpoints/*.ckpt") if not is_complete(p)):
        shown = ", ".join(damaged[:3]) + (f" (+{len(damaged) - 3} more)" if len(damaged) > 3 else "")
        raise CheckpointError(
            f"--ckpt_path last: every checkpoint under {where} is incomplete (truncated or not a checkpoint): {shown}. "
            "Move them away to start fresh, or pass a complete checkpoint as --ckpt_path"
        )
    if not fresh_start:
        raise CheckpointError(f"--ckpt_path last: no last.ckpt under {where}; pass a checkpoint file")
    rank_zero_info(f"--ckpt_path last: no last.ckpt under {where} yet, starting fresh")
    return None


def continue_run_folder(trainer: Trainer, ckpt_path: str | None) -> None:
    """Resume a fit from a version folder's ``last*.ckpt`` (or, where none is left, its newest checkpoint) in that
    folder, not in a new ``version_N``.

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
    version_dir = checkpoint.parent.parent
    run_dir = (Path(logger.save_dir) / str(logger.name)).resolve()
    if checkpoint.parent.name != "checkpoints" or version_dir.parent != run_dir:
        return
    if not checkpoint.name.startswith("last") and last_checkpoint_under(run_dir, version_dir.name):
        return  # a branch off an earlier epoch of a run that still has its last.ckpt
    version = version_dir.name
    number = version.removeprefix("version_")
    logger._version = int(number) if number.isdigit() and version != number else version
