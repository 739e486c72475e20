"""Interrupt and resume lose nothing: same seed -> same run; stop + resume -> same weights; SIGTERM -> checkpoint.

The in-process runs use a 4-block CoAtNet-nano on 32x32 synthetic images (seconds each). Runs
resumed at an epoch boundary and in mid-epoch (after SIGTERM), with and without loader workers,
end exactly where an uninterrupted run does: the shuffle order depends on (seed, epoch) only, a
resumed epoch starts after the batches it already trained on, and loaders seed their workers
without drawing from the global random streams. Comparisons are exact, not within a tolerance: on
one CPU process with a fixed seed every kernel is deterministic, and a resumed run replays the
same arithmetic in the same order.
"""

from __future__ import annotations

import os
import random
import signal
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_cli, subprocess_env
from data_helpers import write_image_folder
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from step_marker import start_marked_fit, wait_for_step

from datamodules import ImageFolderDataModule, SyntheticDataModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.resilience.atomic_io import AtomicCheckpointIO
from lightning_modules.resilience.interrupt import InterruptCheckpoint
from lightning_modules.resilience.nan_guard import NanGuard
from lightning_modules.resilience.random_state import (
    RandomState,
    split_streams,
)
from lightning_modules.resilience.resume_paths import (
    continue_run_folder,
    last_checkpoint_under,
    resolve_ckpt_path,
)
from lightning_modules.resilience.run_checkpoint import RunCheckpoint

EPOCHS = 3


class StopAfterEpoch(Callback):
    """Ends ``fit`` after ``epoch`` as a preempted job would, without changing ``max_epochs`` (and so the lr
    schedule)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class StopAfterStep(Callback):
    """Ends ``fit`` after global step ``step``, inside an epoch, as ``max_time`` or an early-stopping rule would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


class SigtermAfterStep(Callback):
    """Sends this process SIGTERM after global step ``step``, as a preempting scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermInValidation(Callback):
    """Sends this process SIGTERM after the first batch of the validation run at the end of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


class ValidationRecorder(Callback):
    """(epoch, validation batches, val/loss) of every finished validation run of a fit."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int, float]] = []
        self.batches = 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module) -> None:
        self.batches = 0

    def on_validation_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches += 1

    def on_validation_epoch_end(self, trainer: Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.runs.append((trainer.current_epoch, self.batches, float(trainer.callback_metrics["val/loss"])))


class BatchRecorder(Callback):
    """(epoch, batch index, a fingerprint of the images) of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, round(float(batch[0].double().sum()), 3)))


def train(
    folder: Path,
    ckpt_path: str | None = None,
    callbacks=(),
    num_workers: int = 0,
    jpegs: Path | None = None,
    max_steps: int = -1,
    val_size: int = 16,
    decode: str = "gpu",
) -> tuple[ImageClassifier, dict]:
    """3 epochs of 3 batches, on synthetic images or (``jpegs``) a JPEG folder decoded and cropped on the device
    (or, ``decode="cpu"``, in the loader workers); ``val_size`` / 16 validation batches."""
    seed_everything(0, workers=True)
    model = ImageClassifier(
        model_name="coatnet_nano",
        num_classes=4,
        image_size=(32, 32),
        model_overrides={"depths": (1, 1, 1, 1)},
        warmup_steps=2,
        mixup_alpha=0.2,
    )
    if jpegs is None:
        data = SyntheticDataModule(
            num_classes=4,
            image_size=32,
            train_size=48,
            val_size=val_size,
            test_size=8,
            batch_size=16,
            num_workers=num_workers,
        )
    else:
        data = ImageFolderDataModule(
            root=str(jpegs),
            num_classes=4,
            image_size=32,
            val_holdout_per_class=1,
            decode=decode,
            batch_size=16,
            num_workers=num_workers,
        )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=folder,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            RunCheckpoint(dirpath=folder, save_last=True, monitor="val/acc1", mode="max"),  # as cli.py
            NanGuard(),
            InterruptCheckpoint(),
            RandomState(),
            *callbacks,
        ],
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, {k: float(v) for k, v in trainer.callback_metrics.items()}


def assert_same(a: tuple[ImageClassifier, dict], b: tuple[ImageClassifier, dict]) -> None:
    assert a[1] == b[1], f"metrics differ:\n{a[1]}\n{b[1]}"
    state_a, state_b = a[0].state_dict(), b[0].state_dict()
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_same_seed_gives_same_metrics_and_weights(tmp_path):
    assert_same(train(tmp_path / "a"), train(tmp_path / "b"))


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path):
    full = train(tmp_path / "full")
    train(tmp_path / "first", callbacks=[StopAfterEpoch(0)])
    assert_same(full, train(tmp_path / "resumed", ckpt_path=str(tmp_path / "first" / "last.ckpt")))


def test_resume_with_loader_workers_at_an_epoch_boundary_matches_uninterrupted_run(tmp_path):
    # loader workers fetch as soon as an iterator exists, which Lightning creates before set_epoch
    full = train(tmp_path / "full", num_workers=2)
    train(tmp_path / "first", callbacks=[StopAfterEpoch(0)], num_workers=2)
    assert_same(full, train(tmp_path / "resumed", ckpt_path=str(tmp_path / "first" / "last.ckpt"), num_workers=2))


def test_a_stop_inside_an_epoch_saves_last_and_the_resumed_run_trains_the_rest_of_it(tmp_path):
    # Lightning writes last.ckpt only with a validation or epoch-end save: the steps after it were lost.
    train(tmp_path / "max_steps", max_steps=4)
    assert torch.load(tmp_path / "max_steps" / "last.ckpt", weights_only=True)["global_step"] == 4
    seen_full, seen_first, seen_resumed = BatchRecorder(), BatchRecorder(), BatchRecorder()
    full = train(tmp_path / "full", callbacks=[seen_full])
    train(tmp_path / "first", callbacks=[StopAfterStep(4), seen_first])
    assert torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)["global_step"] == 4
    resumed = train(tmp_path / "resumed", ckpt_path=str(tmp_path / "first" / "last.ckpt"), callbacks=[seen_resumed])
    assert seen_first.seen[-1][:2] == (1, 0), "the stop must fall inside epoch 1"
    assert seen_first.seen + seen_resumed.seen == seen_full.seen, "every batch exactly once, in the same order"
    assert_same(full, resumed)


@pytest.mark.parametrize("source", ["synthetic", "jpegs_decoded_on_device", "jpegs_cropped_in_workers"])
def test_resume_in_mid_epoch_trains_the_rest_of_the_epoch_and_matches_uninterrupted_run(tmp_path, source):
    # device-side crops and RandAugment draw from the checkpointed streams; worker crops from (seed, epoch, index)
    jpegs, decode = None, "cpu" if source == "jpegs_cropped_in_workers" else "gpu"
    if source != "synthetic":
        jpegs = write_image_folder(tmp_path / "jpegs", "train", ["a", "b", "c", "d"], per_class=13, size=(40, 48))
    seen_full, seen_first, seen_resumed = BatchRecorder(), BatchRecorder(), BatchRecorder()
    full = train(tmp_path / "full", callbacks=[seen_full], num_workers=2, jpegs=jpegs, decode=decode)
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException, after InterruptCheckpoint saved last.ckpt
        train(
            tmp_path / "first", callbacks=[SigtermAfterStep(4), seen_first], num_workers=2, jpegs=jpegs, decode=decode
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(
            tmp_path / "resumed",
            ckpt_path=str(tmp_path / "first" / "last.ckpt"),
            callbacks=[seen_resumed],
            num_workers=2,
            jpegs=jpegs,
            decode=decode,
        )
    assert not [w for w in caught if "not resumable" in str(w.message)], "the training loader is resumable"
    assert seen_first.seen[-1][:2] == (1, 0), "the interruption must fall inside epoch 1"
    assert seen_first.seen + seen_resumed.seen == seen_full.seen, "every batch exactly once, in the same order"
    assert_same(full, resumed)


def test_a_validation_stopped_by_sigterm_runs_again_in_full_after_resume(tmp_path):
    # Lightning took the checkpoint written after a validation batch for a finished validation and skipped it.
    seen_full, seen_first, seen_resumed = ValidationRecorder(), ValidationRecorder(), ValidationRecorder()
    full = train(tmp_path / "full", callbacks=[seen_full], val_size=32)
    with pytest.raises(SystemExit):
        train(tmp_path / "first", callbacks=[SigtermInValidation(1), seen_first], val_size=32)
    resumed = train(
        tmp_path / "resumed", ckpt_path=str(tmp_path / "first" / "last.ckpt"), callbacks=[seen_resumed], val_size=32
    )
    assert [run[:2] for run in seen_full.runs] == [(0, 2), (1, 2), (2, 2)]
    assert seen_first.runs == seen_full.runs[:1], "the interrupted validation of epoch 1 did not finish"
    assert seen_resumed.runs == seen_full.runs[1:], "epoch 1 is validated on resume, on all its batches"
    assert_same(full, resumed)


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_last_resumes(tmp_path):
    logs, marker = tmp_path / "logs", tmp_path / "step.txt"
    args = [
        "fit",
        "--config",
        "smoke.yaml",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=12",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_progress_bar=false",
    ]
    env = subprocess_env(threads=1, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]))
    proc = start_marked_fit(args, marker, tmp_path, env)
    try:
        wait_for_step(proc, marker, step=2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    finally:
        proc.kill()
    last = logs / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    assert "SIGTERM received: stopped after global step" in output and str(last) in output, output[-3000:]
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert 2 <= saved["global_step"] < 12, "saved at the step boundary where the signal arrived"

    resumed = run_cli([*args, "--ckpt_path=last", "--trainer.enable_progress_bar=false"], cwd=tmp_path, threads=1)
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr
    final = torch.load(last, map_location="cpu", weights_only=True)  # the resumed run goes on in version_0
    assert final["global_step"] == 12 and final["epoch"] == 0, "the interrupted epoch was completed, not restarted"
    assert not (logs / "smoke" / "version_1").exists()


def _draws() -> tuple[float, float, float]:
    return torch.rand(()).item(), float(np.random.random()), random.random()


class _Rank:
    """Stands in for a Trainer in ``RandomState.setup``."""

    def __init__(self, rank: int) -> None:
        self.global_rank = rank


def _streams_after_setup(rank: int) -> tuple[float, float, float]:
    seed_everything(5)
    RandomState().setup(_Rank(rank), None, "fit")
    return _draws()


def test_every_rank_but_zero_gets_its_own_streams():
    seed_everything(5)
    shared = _draws()
    rank0, rank1, rank2 = (_streams_after_setup(rank) for rank in range(3))
    assert rank0 == shared  # a one-device run draws what it drew before the split existed
    assert not set(rank0) & set(rank1)
    assert rank1 != rank2
    assert _streams_after_setup(1) == rank1  # deterministic per rank


def test_resume_restores_rank_zero_state_and_splits_it_again_per_rank():
    seed_everything(9)
    saved = RandomState().state_dict()
    expected = {}
    for rank in (0, 1):
        RandomState().load_state_dict(saved)  # what rank 0 resumes with
        split_streams(rank)
        expected[rank] = _draws()
    for rank in (0, 1):
        callback = RandomState()
        callback.setup(_Rank(rank), None, "fit")
        torch.rand(5), np.random.random(3), random.random()  # the streams moved on before the restore
        callback.load_state_dict(saved)
        assert _draws() == expected[rank]
    assert expected[0] != expected[1]


def _write_checkpoint(path: Path, mtime: float | None = None) -> Path:
    """A complete (zip) file standing in for a checkpoint, optionally dated ``mtime``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_a_fit_continues_the_version_folder_only_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "x"
    for version in ("version_3", "a", "b"):
        _write_checkpoint(run / version / "checkpoints" / "last.ckpt")
    _write_checkpoint(run / "version_3" / "checkpoints" / "epoch001-acc1_0.5000.ckpt")

    def version_after(checkpoint: Path, version=None):
        logger = TensorBoardLogger(save_dir=tmp_path, name="x", version=version)
        continue_run_folder(SimpleNamespace(loggers=[logger]), str(checkpoint))
        return logger._version

    assert version_after(run / "version_3" / "checkpoints" / "last.ckpt") == 3
    assert version_after(run / "a" / "checkpoints" / "last.ckpt") == "a"
    assert version_after(run / "version_3" / "checkpoints" / "epoch001-acc1_0.5000.ckpt") is None, (
        "a branch: new folder"
    )
    assert version_after(run / "version_3" / "checkpoints" / "last.ckpt", version="mine") == "mine", "the config's wins"
    assert version_after(tmp_path / "elsewhere" / "checkpoints" / "last.ckpt") is None

    # With a version the config fixes, `last` looks in that version only, even when another one is newer.
    os.utime(run / "b" / "checkpoints" / "last.ckpt", (time.time() + 60, time.time() + 60))
    assert last_checkpoint_under(run) == str(run / "b" / "checkpoints" / "last.ckpt")
    assert last_checkpoint_under(run, "a") == str(run / "a" / "checkpoints" / "last.ckpt")


def test_last_without_last_ckpt_resumes_from_the_newest_complete_checkpoint_of_the_run_and_says_which(tmp_path, capsys):
    run, now = tmp_path / "x", time.time()
    checkpoints = run / "version_0" / "checkpoints"
    older = _write_checkpoint(checkpoints / "epoch000-acc1_0.2000.ckpt", now - 60)
    newest = _write_checkpoint(checkpoints / "epoch001-acc1_0.4000.ckpt", now - 30)
    (checkpoints / "epoch002-acc1_0.5000.ckpt").write_bytes(newest.read_bytes()[:-100])  # truncated: a copy cut short
    (checkpoints / ".last.ckpt.partial").write_bytes(b"half")  # a kill mid-write
    logger = TensorBoardLogger(save_dir=tmp_path, name="x")
    trainer = SimpleNamespace(
        checkpoint_callback=SimpleNamespace(dirpath=None), loggers=[logger], default_root_dir=str(tmp_path)
    )
    assert older.stat().st_mtime < newest.stat().st_mtime
    found = resolve_ckpt_path(trainer, "last", fresh_start=True)
    assert found == str(newest)
    assert (
        f"no complete last.ckpt under {run}; resuming from the newest checkpoint, {newest}" in capsys.readouterr().err
    )
    continue_run_folder(trainer, found)
    assert logger._version == 0, "the run goes on in its own folder, as from last.ckpt"


def test_checkpoints_keep_the_callback_state_keys_of_the_former_class_names(tmp_path):
    """``RandomState`` was ``RandomStateCheckpoint`` and ``RunCheckpoint`` was ``StopCheckpoint``: checkpoints written
    under those names must still restore their random streams and best scores (Lightning matches by state key)."""
    train(tmp_path / "first", callbacks=[StopAfterEpoch(0)])
    saved = torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)["callbacks"]
    assert "RandomStateCheckpoint" in saved
    assert any(key.startswith("ModelCheckpoint{'monitor': 'val/acc1'") for key in saved), saved.keys()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tmp_path / "resumed", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
