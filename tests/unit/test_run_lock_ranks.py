"""RunLock under DDP, with the collectives recorded: every rank must take part in the same ones, or the
ranks that skip one wait in the next collective forever (a DDP fit hung at setup this way)."""

from __future__ import annotations

import os

import pytest

from lightning_modules.resilience.run_lock import RunFolderInUse, RunLock, lock_run_folder


class RankOfFit:
    """The parts of a Trainer that RunLock touches, on one rank; ``rank0_says`` is what rank 0 broadcasts."""

    def __init__(self, folder, global_zero: bool, rank0_says=None) -> None:
        self._folder, self.is_global_zero, self._rank0_says = str(folder), global_zero, rank0_says
        self.collectives: list[str] = []
        self.strategy = self
        self.loggers = []  # as with --trainer.logger false: the lock is in log_dir

    @property
    def log_dir(self) -> str:
        self.collectives.append("log_dir")  # Lightning broadcasts rank 0's log_dir
        return self._folder

    def broadcast(self, obj):
        self.collectives.append("broadcast")
        return obj if self.is_global_zero else self._rank0_says


def test_rank0_and_rank1_take_part_in_the_same_collectives_and_only_rank0_locks(tmp_path):
    rank0, rank1 = RankOfFit(tmp_path, global_zero=True), RankOfFit(tmp_path, global_zero=False)
    lock0, lock1 = RunLock(), RunLock()
    lock0.setup(rank0, None, "fit")
    lock1.setup(rank1, None, "fit")
    try:
        assert rank0.collectives == rank1.collectives == ["log_dir", "broadcast"]
        assert lock0._fd is not None and lock1._fd is None
        with pytest.raises(RunFolderInUse):
            lock_run_folder(tmp_path)
    finally:
        lock0.teardown(rank0, None, "fit")
    os.close(lock_run_folder(tmp_path))  # released


def test_a_refusal_on_rank0_stops_the_other_ranks_too(tmp_path):
    holder = lock_run_folder(tmp_path)
    try:
        rank0 = RankOfFit(tmp_path, global_zero=True)
        with pytest.raises(RunFolderInUse, match="another fit") as refused:
            RunLock().setup(rank0, None, "fit")
        rank1 = RankOfFit(tmp_path, global_zero=False, rank0_says=str(refused.value))
        with pytest.raises(RunFolderInUse, match="another fit"):
            RunLock().setup(rank1, None, "fit")
        assert rank0.collectives == rank1.collectives == ["log_dir", "broadcast"]
    finally:
        os.close(holder)


def test_other_stages_take_no_lock_and_no_collective(tmp_path):
    rank = RankOfFit(tmp_path, global_zero=True)
    RunLock().setup(rank, None, "validate")
    assert rank.collectives == []
