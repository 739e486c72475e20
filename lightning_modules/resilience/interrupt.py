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

from lightning_modules.hparam_ranges import PositiveInt, check_ranges
from lightning_modules.resilience.announce import announce
from lightning_modules.resilience.interrupted_validation import restart_validation
from lightning_modules.resilience.slurm_requeue import requeue, slurm_job_id

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
            on the SLURM job (see ``configs/run/slurm.yaml``). Their handlers are installed in ``setup``, before
            Lightning's signal connector, which then leaves its own SLURM requeue (an ``hpc_ckpt`` saved in the
            middle of a step, and a second ``scontrol requeue``) out: it never replaces a handler that is there.
            Such a signal while the fit starts up stops it after its first step, saying so, and requeues.
    """

    def __init__(
        self, filename: str = "last.ckpt", check_every_n_steps: PositiveInt = 10, requeue_on: list[str] | None = None
    ) -> None:
        check_ranges(InterruptCheckpoint.__init__, locals())  # the CLI's parser checks it too; 0 divided by zero
        self.filename = filename
        self.check_every_n_steps = check_every_n_steps
        self.requeue_on = {catchable_signal_named(name) for name in requeue_on or ()}
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: Trainer | None = None
        self._validating = False

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: the user does not want to wait
        if self.signal is None and self._trainer is None:
            announce(
                f"{signal.Signals(signum).name} received before training started: the run stops after its first "
                "step" + (" and requeues" if signum in self.requeue_on else "")
            )
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
        """Claim the requeue signals other than SIGTERM and SIGINT (which Lightning wraps) before Lightning's
        signal connector runs: it then installs no SLURM requeue of its own."""
        if stage == "fit":
            self.signal, self._trainer = None, None
            self._install(self.requeue_on - {signal.SIGTERM, signal.SIGINT})

    def _install(self, signals: set[int]) -> bool:
        """Route ``signals`` to :meth:`_record`, remembering the handlers they had; False outside the main thread."""
        try:
            for signum in signals:
                if signum not in self._previous:
                    self._previous[signum] = signal.signal(signum, self._record)
        except ValueError:  # not in the main thread: leave signals to Lightning
            self._restore()
            return False
        return True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Install the handlers now: Lightning registers its own SIGTERM handler just before this hook."""
        self._trainer = trainer
        if not self._install({signal.SIGTERM, signal.SIGINT, *self.requeue_on}):
            return
        if trainer.world_size > 1 and hasattr(trainer.fit_loop.epoch_loop, _LIGHTNING_STEP_CHECK):
            setattr(trainer.fit_loop.epoch_loop, _LIGHTNING_STEP_CHECK, _skip)
        if self.signal is not None and trainer.world_size == 1:  # several ranks agree on it at their next check
            trainer._signal_connector.received_sigterm = True  # raises SIGTERMException after the first step

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

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()  # a fit that failed before training started leaves the handlers of setup

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


UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def catchable_signal_named(name: str) -> signal.Signals:
    """:func:`signal_named`, refusing the signals no process can handle."""
    signum = signal_named(name)
    if signum in UNCATCHABLE:
        raise ValueError(
            f"interrupt_checkpoint.requeue_on: {signum.name} cannot be caught (the kernel stops the process at once, "
            "nothing can be saved); use SIGUSR1 (#SBATCH --signal=USR1@90) or SIGTERM"
        )
    return signum


def signal_named(name: str) -> signal.Signals:
    """``signal.SIGUSR1`` for "SIGUSR1" or "USR1"; a readable error for anything else."""
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise ValueError(
            f"interrupt_checkpoint.requeue_on: {name!r} is not a signal name; use e.g. SIGUSR1 or SIGTERM"
        ) from None
