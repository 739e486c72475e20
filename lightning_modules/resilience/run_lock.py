"""One fit at a time per run folder: a second fit resuming into the same ``version_N`` would interleave its
checkpoints, ``last.ckpt`` and TensorBoard events with the first one's.

The lock is ``fcntl.flock`` on ``<log_dir>/fit.lock``, not a PID file: the kernel drops it when the process
ends in any way (exit, crash, SIGKILL, OOM killer), so no stale lock is ever left to clean up, and it also
holds between nodes on shared file systems with working locks, where a PID says nothing about another host.
The holder's PID is written into the file only for the message. The file stays (removing it would let a
waiting process lock a deleted file while a third one creates a new one).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_modules.resilience.announce import announce

LOCK_NAME = "fit.lock"


class RunFolderInUse(ValueError):
    """The run folder cannot be locked for this fit: another live process holds its lock, or ``fit.lock`` is no
    file (a ValueError: the CLI prints it as one line)."""


def lock_run_folder(folder: Path) -> int | None:
    """A descriptor holding ``folder/fit.lock`` exclusively (closing it releases the lock); None where the file
    system has no locks. Raises :class:`RunFolderInUse` naming the holder's PID when another process has it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if path.is_dir():
        raise RunFolderInUse(f"{path} is a folder, but the run lock is a file there: remove it (rmdir {path})")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise RunFolderInUse(
                f"{path}: another fit (pid {holder}) is writing into {folder}; wait for it to end, or start this "
                "one in its own folder (--trainer.logger.init_args.version NAME)"
            ) from None
        announce(
            f"{path}: this file system cannot lock ({err.strerror}); a second fit in {folder} would not be stopped"
        )
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run_folder(trainer: Trainer, log_dir: str | None) -> Path:
    """The folder a fit writes its checkpoints into: ``log_dir`` (``trainer.log_dir``, a version folder) for
    TensorBoard and CSV, the default root without a logger. Other loggers (W&B, MLflow) report as ``log_dir`` their
    ``save_dir``, shared by all their runs, or None; ``ModelCheckpoint`` writes into ``<save_dir>/<name>/<version>``
    there, one folder per run, so that one is locked."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if log_dir is not None and (logger is None or isinstance(logger, TensorBoardLogger | CSVLogger)):
        return Path(log_dir)
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


class RunLock(Callback):
    """Config key ``run_lock:``. Holds the lock of the run's folder (:func:`run_folder`) from ``setup`` to
    ``teardown`` of a fit.

    Only global rank 0 locks: the other DDP ranks of the same fit write nothing there. Every rank still takes
    part in the two collectives (``trainer.log_dir`` broadcasts, and so does the outcome), so that a refused lock
    stops all ranks and a granted one lets all of them go on together.
    """

    def __init__(self) -> None:
        self._fd: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = trainer.log_dir  # a collective: every rank must ask
        refusal = None
        if trainer.is_global_zero:
            try:
                self._fd = lock_run_folder(run_folder(trainer, log_dir))
            except RunFolderInUse as err:
                refusal = str(err)
        refusal = trainer.strategy.broadcast(refusal)
        if refusal is not None:
            raise RunFolderInUse(refusal)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()  # a fit that failed in this process frees the folder for the next one in it

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
