"""Which checkpoint ``--ckpt_path last`` means, and the run folder a resumed fit continues in."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from coatnet.errors import CheckpointError
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
