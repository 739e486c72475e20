"""SIGTERM (SLURM preemption, ``kill``) or a first Ctrl+C becomes a clean stop at the next step boundary with
``last.ckpt`` written, so ``fit --ckpt_path last`` continues the run. Signals named in ``requeue_on`` (SLURM's
warning before the time limit, ``#SBATCH --signal=USR1@90``) do the same and then requeue the job.

Lightning already stops on SIGTERM at a step boundary (and tells every DDP rank) but saves nothing; SIGINT it
would deliver as a ``KeyboardInterrupt`` in the middle of a step."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_modules.resilience.announce import announce
from lightning_modules.resilience.interrupted_validation import restart_validation
from lightning_modules.resilience.slurm_requeue import requeue, slurm_job_id, turn_off_lightning_requeue

_LIGHTNING_STEP_CHECK = "_broadcast_sigterm_tensor"


def _skip() -> None:
    """Stands in for Lightning's per-step check while ``InterruptCheckpoint`` handles signals."""


class InterruptCheckpoint(Callback):
    """On SIGTERM or a first SIGINT during ``fit``: finish the current step, save ``last.ckpt``, exit.

    SIGINT is forwarded to Lightning's SIGTERM handler, so both take the same path: Lightning raises
    ``SIGTERMException`` at the step boundary, and :meth:`on_exception` saves. The process then exits
    with the usual 128 + signal number. A second Ctrl+C interrupts at once.

    With several ranks, Lightning's handler is not used: it starts a broadcast inside the signal handler,
    and each rank checks its own flag at several points, so ranks signalled a moment apart stop at
    different places and the run crashes or hangs in a collective. Instead the ranks agree on a pending
    signal every ``check_every_n_steps`` optimizer steps (one all-reduce, a host sync) and then all stop
    after the same step. Lightning's own check, a broadcast of rank 0's flag read back on the host before
    every step, then only repeats this one, so it is switched off: a host sync per step less under DDP.

    A signal during a validation run of ``fit`` stops it after the current batch; the checkpoint then records that
    validation as not done, and the resumed fit runs it again in full (see ``interrupted_validation``).

    Args:
        filename: checkpoint written next to ``ModelCheckpoint``'s files.
        check_every_n_steps: with several ranks, how often they compare notes on a pending signal.
        requeue_on: signal names (``SIGUSR1``, ``SIGTERM``) after which rank 0 also runs ``scontrol requeue``
            on the SLURM job (see ``configs/run/slurm.yaml``); Lightning's own SLURM requeue is then switched off.
    """

    def __init__(
        self, filename: str = "last.ckpt", check_every_n_steps: int = 10, requeue_on: list[str] | None = None
    ) -> None:
        self.filename = filename
        self.check_every_n_steps = check_every_n_steps
        self.requeue_on = {signal_named(name) for name in requeue_on or ()}
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: Trainer | None = None
        self._validating = False

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: the user does not want to wait
        self.signal = self.signal or signum
        lightning_sigterm = self._previous.get(signal.SIGTERM)
        if self._trainer is not None and self._trainer.world_size > 1:
            launcher = self._trainer.strategy.launcher
            if launcher is not None and self.signal == signum:
                launcher.kill(signum)  # the ranks this process started, as Lightning's handler does
        elif callable(lightning_sigterm):
            lightning_sigterm(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.requeue_on:
            turn_off_lightning_requeue(trainer)  # before Lightning installs its signal handlers

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Install the handlers now: Lightning registers its own SIGTERM handler just before this hook."""
        self.signal, self._trainer = None, trainer
        try:
            for signum in {signal.SIGTERM, signal.SIGINT, *self.requeue_on}:
                self._previous[signum] = signal.signal(signum, self._record)
        except ValueError:  # not in the main thread: leave signals to Lightning
            self._previous.clear()
            return
        if trainer.world_size > 1 and hasattr(trainer.fit_loop.epoch_loop, _LIGHTNING_STEP_CHECK):
            setattr(trainer.fit_loop.epoch_loop, _LIGHTNING_STEP_CHECK, _skip)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._trainer is not None:
            vars(self._trainer.fit_loop.epoch_loop).pop(_LIGHTNING_STEP_CHECK, None)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """With several ranks: every ``check_every_n_steps`` steps, stop all of them if any has a signal."""
        if trainer.world_size == 1 or trainer.global_step % self.check_every_n_steps:
            return
        pending = torch.tensor([self.signal or 0], device=pl_module.device)
        torch.distributed.all_reduce(pending, op=torch.distributed.ReduceOp.MAX)
        if pending.item():
            self.signal = self.signal or int(pending.item())
            trainer._signal_connector.received_sigterm = True  # every rank raises SIGTERMException right after

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validating = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validating = False  # before ModelCheckpoint's save there: Lightning runs it after the other callbacks

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._validating:  # only the save in on_exception happens while a validation run is unfinished
            restart_validation(checkpoint)

    def checkpoint_path(self, trainer: Trainer) -> Path:
        """``last.ckpt`` next to ``ModelCheckpoint``'s files (or under ``default_root_dir`` without one)."""
        callback = trainer.checkpoint_callback
        folder = callback.dirpath if callback is not None and callback.dirpath else Path(trainer.default_root_dir)
        return Path(folder) / self.filename

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self.signal is None:
            return
        signum, self.signal = self.signal, None
        self._restore()
        exception.code = 128 + signum  # the shell convention, so job scripts can tell the run did not finish
        if trainer.state.fn == TrainerFn.FITTING and trainer.global_step > 0:
            path = self.checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            announce(
                f"{signal.Signals(signum).name} received: stopped after global step {trainer.global_step} and saved "
                f"{path}. Resume with the same command plus --ckpt_path last"
            )
        if signum in self.requeue_on and trainer.is_global_zero:
            job = slurm_job_id()
            announce(requeue(job) if job else "not in a SLURM job (no SLURM_JOB_ID): nothing to requeue")


def signal_named(name: str) -> signal.Signals:
    """``signal.SIGUSR1`` for "SIGUSR1" or "USR1"; a readable error for anything else."""
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise ValueError(f"interrupt_checkpoint.requeue_on: {name!r} is not a signal name; use e.g. SIGUSR1 or SIGTERM") from None


