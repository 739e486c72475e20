"""Callbacks that keep a run's progress safe: stop on a diverged loss, checkpoint on SIGTERM/SIGINT,
resume with the same random streams.

``FiniteLossGuard`` stops training after a NaN/inf loss, before any checkpoint holding the damaged
weights is written, so the newest checkpoint on disk is the last good one.

``StopCheckpoint`` is ``ModelCheckpoint`` that also writes ``last.ckpt`` when training stops inside an
epoch (``max_steps``, ``max_time``, a callback setting ``should_stop``): Lightning saves ``last`` only
with a validation or epoch-end save, so the steps since the last one were lost.

``InterruptCheckpoint`` turns a SIGTERM (SLURM preemption, ``kill``) or a first Ctrl+C into a clean
stop at the next step boundary with ``last.ckpt`` written, so ``fit --ckpt_path last`` continues
the run. Lightning already stops on SIGTERM at a step boundary (and tells every DDP rank) but
saves nothing; SIGINT it would deliver as a ``KeyboardInterrupt`` in the middle of a step.
"""

from __future__ import annotations

import random
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_modules.errors import TrainingDiverged


def _loss(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


@rank_zero_only
def _tell(message: str) -> None:
    """Straight to stderr: warnings may be filtered and logging silenced, this line must be seen."""
    print(message, file=sys.stderr, flush=True)


class FiniteLossGuard(Callback):
    """Raises :class:`TrainingDiverged` naming the first global step whose training loss was not finite.

    Reading the loss on the host every step would make the CPU wait for the GPU each step and lose
    the overlap of Python work with device work. So the check stays on the device (a flag and the
    first bad step), and the host reads it every ``check_every_n_steps`` steps, at the end of every
    epoch and before every checkpoint is written: weights damaged by a NaN are never saved, and
    training stops at most ``check_every_n_steps`` steps after the first bad loss. With DDP every
    rank checks its own loss; the gradients are all-reduced, so a NaN on one rank poisons all of
    them and they stop together.
    """

    def __init__(self, check_every_n_steps: int = 20) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None  # -1 while every loss was finite
        self._step = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step  # this batch's loss is logged under it

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _loss(outputs)
        if loss is None:
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()).all() & (self._first_bad < 0)
        self._first_bad = torch.where(bad, self._step, self._first_bad)
        if (self._step + 1) % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.check(trainer)

    def check(self, trainer: Trainer) -> None:
        """Raise if any loss since the start was NaN/inf (one device-to-host copy)."""
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step < 0:
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        raise TrainingDiverged(
            f"training loss is not finite (nan or inf) at global step {step}; stopped before "
            f"saving these weights. Last good checkpoint: {last}. Resume from it with a lower learning rate, more "
            "warm-up, gradient clipping (--trainer.gradient_clip_val 1.0) or fp32/bf16 instead of fp16."
        )


class StopCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also saves ``last.ckpt`` after the step at which training stops inside an epoch.

    The save happens at the step boundary, as ``every_n_train_steps`` saves do, so ``--ckpt_path last`` with a
    later limit trains the rest of that epoch instead of skipping it.
    """

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key, so checkpoints written with either class resume with their best score."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        max_steps_reached = 0 <= trainer.max_steps <= trainer.global_step
        stopping = trainer.should_stop or max_steps_reached
        unsaved = self._last_global_step_saved != trainer.global_step
        if self.save_last and stopping and unsaved and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# Lightning 2.6's per-step SIGTERM check under DDP: a broadcast from rank 0 and a host read of it.
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

    Args:
        filename: checkpoint written next to ``ModelCheckpoint``'s files.
        check_every_n_steps: with several ranks, how often they compare notes on a pending signal.
    """

    def __init__(self, filename: str = "last.ckpt", check_every_n_steps: int = 10) -> None:
        self.filename = filename
        self.check_every_n_steps = check_every_n_steps
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: Trainer | None = None

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

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Install the handlers now: Lightning registers its own SIGTERM handler just before this hook."""
        self.signal, self._trainer = None, trainer
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
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
        if trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        _tell(
            f"{signal.Signals(signum).name} received: stopped after global step {trainer.global_step} and saved "
            f"{path}. Resume with the same command plus --ckpt_path last"
        )


class RandomStateCheckpoint(Callback):
    """Gives every DDP rank its own random streams, and saves and restores them with checkpoints.

    ``seed_everything`` seeds every rank alike, so without a split each rank would draw the same
    drop-path masks, Mixup/CutMix pairs, device-side augmentations and loader-worker seeds for the
    same batch positions: fewer independent draws per global batch than the batch has images.
    In ``setup`` every rank but 0 reseeds torch (CPU and CUDA), numpy and Python from the shared
    state and its rank, after the model has been built alike on every rank; rank 0 keeps the
    shared streams, so a one-device run draws exactly what it did before.

    Lightning restores weights, optimizer, schedulers and loop counters but not the random streams,
    so without this a resumed run draws different Mixup/CutMix and drop-path samples than an
    uninterrupted one. States are stored as tensors and plain Python values so the checkpoint still
    loads with ``weights_only=True``. Rank 0's state is saved; on resume every rank restores it and
    splits it again by rank, so a resumed run on the same number of devices continues identically.
    """

    def __init__(self) -> None:
        self.rank = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.rank = trainer.global_rank
        split_streams(self.rank)

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        split_streams(self.rank)


def split_streams(rank: int) -> None:
    """Reseed torch, numpy and Python from the current (shared) torch stream and ``rank``; rank 0 keeps its streams."""
    if rank == 0:
        return
    shared = int(torch.randint(2**62, (1,)).item())
    torch_seed, numpy_seed, python_seed = np.random.SeedSequence([shared, rank]).generate_state(3, dtype=np.uint64)
    torch.manual_seed(int(torch_seed))
    np.random.seed(int(numpy_seed) % 2**32)
    random.seed(int(python_seed))
