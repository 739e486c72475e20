"""The training loop never makes the host wait for the device between logging steps.

``bench.host_syncs`` audits whole steps of a real ``cli.py fit``. On the CPU it records the
operators that would stall a GPU run (value reads, data-dependent shapes, tensors built from host
data on the device) when they touch the model's or the batch's tensors.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import REPO_ROOT
from data_helpers import write_fake_cifar, write_image_folder

from bench import host_syncs
from bench.host_syncs import DeviceTensors, SyncAudit
from lightning_modules.classifier import ImageClassifier

QUIET = ["--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0", "--cpu_threads=1"]


def audit(tmp_path, *config_args: str, start: int = 2, steps: int = 4) -> host_syncs.HostSyncAudit:
    where = [f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"]
    return host_syncs.main(["--start", str(start), "--steps", str(steps), *config_args, *where, *QUIET])


def plain_and_logging(result: host_syncs.HostSyncAudit) -> tuple[int, int]:
    """Syncs in steps without and with a logger write; both kinds must have been audited."""
    assert result.audited["steps"] >= 1 and result.audited["logging_steps"] >= 1, result.audited
    return result.steps.total, result.logging_steps.total


def test_recorder_flags_device_reads_and_copies_and_ignores_host_bookkeeping():
    device_tensors = DeviceTensors()
    weights = torch.randn(4)
    device_tensors.mark(weights)
    device = weights.device
    host_counter = torch.zeros(())
    with SyncAudit(device, device_tensors) as recorder:
        loss = (weights * 2).sum()
        loss.item()  # read of a device value
        weights[weights > 0]  # data-dependent shape
        torch.tensor([1.0, 2.0], device=device)  # host data copied to the device
        weights.new_tensor([3.0])  # the same, through a device tensor
        moved = torch.arange(3).to(device)  # blocking copy to the device
        queued = torch.arange(3).to(device, non_blocking=True)  # queued copy: fine
        (queued * weights[:3]).cpu()  # device result copied back to the host
        host_counter.add_(1).item()  # optimizer-style step counter: host only
        torch.tensor([5, 6]).nonzero()  # host index bookkeeping
    reasons = sorted(reason.split(" (")[0] for reason, _ in recorder.record.counts.elements())
    assert reasons == [
        "device tensor read on the host",
        "host tensor copied to the device without non_blocking",
        "output size depends on values",
        "tensor built from host data on the device",
        "tensor built from host data on the device",
        "value read on the host",
    ], recorder.record.counts
    assert all(site.startswith("tests/perf/test_host_syncs.py:") for _, site in recorder.record.counts)
    assert device_tensors.any([moved]) and device_tensors.any([queued])  # copies count as device tensors


def test_smoke_fit_reads_the_device_only_when_logging(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as written in the README: no save_dir given
    args = ["--start", "2", "--steps", "4", "--config", "smoke.yaml", "--trainer.log_every_n_steps=3", *QUIET]
    plain, logging = plain_and_logging(host_syncs.main(args))
    assert plain == 0
    assert logging > 0  # the loggers read the logged values: the recorder sees real reads
    assert not list(tmp_path.iterdir()), "the audit run leaves no logs/ or last.ckpt for a later --ckpt_path last"


def test_audit_catches_a_per_step_read_in_the_training_step(tmp_path, monkeypatch):
    step = ImageClassifier.training_step

    def step_with_read(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        self.last_loss = loss.item()
        return loss

    monkeypatch.setattr(ImageClassifier, "training_step", step_with_read)
    result = audit(tmp_path, "--config", "smoke.yaml", "--trainer.log_every_n_steps=3")
    assert result.steps.total == result.audited["steps"]
    assert all("step_with_read" in site for _, site in result.steps.counts)


def test_cifar_recipe_with_device_augmentation_and_mixing_never_waits(tmp_path):
    """RandAugment (geometric ops included), pad-crop-flip, random erasing and Mixup/CutMix on the batch."""
    write_fake_cifar(tmp_path / "data", "cifar10", train_per_class=12, test_per_class=2)
    result = audit(
        tmp_path,
        "--config",
        "cifar10.yaml",
        "--model.model_name=coatnet_nano",
        "--model.compile=false",
        "--model.channels_last=false",
        "--trainer.precision=32-true",
        "--trainer.log_every_n_steps=3",
        f"--data.init_args.root={tmp_path / 'data'}",
        "--data.init_args.download=false",
        "--data.init_args.holdout_per_class=2",
        "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0",
        "--data.init_args.augment.randaugment_magnitude=15",
        "--data.init_args.augment.random_erasing=0.5",
    )
    plain, _ = plain_and_logging(result)
    assert plain == 0, host_syncs.format_report(result)


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_image_folder_pipeline_never_waits(tmp_path, decode):
    """ImageNet-style folder: uint8 batches normalised on the device; with decode=gpu, decode, crop and policy
    there too."""
    classes = ["a", "b"]
    write_image_folder(tmp_path / "images", "train", classes, per_class=24, size=(40, 48))
    write_image_folder(tmp_path / "images", "val", classes, per_class=2, size=(40, 48))
    result = audit(
        tmp_path,
        "--config",
        "coatnet0.yaml",
        "--model.model_name=coatnet_nano",
        "--model.compile=false",
        "--model.channels_last=false",
        "--model.mixup_alpha=0.8",
        "--model.cutmix_alpha=1.0",
        "--trainer.precision=32-true",
        "--trainer.log_every_n_steps=3",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.accumulate_grad_batches=1",
        f"--data.init_args.root={tmp_path / 'images'}",
        "--data.init_args.num_classes=2",
        "--data.init_args.image_size=32",
        f"--data.init_args.decode={decode}",
        "--data.init_args.batch_size=6",
        "--data.init_args.num_workers=0",
    )
    plain, _ = plain_and_logging(result)
    assert plain == 0, host_syncs.format_report(result)


def test_cuda_mode_turns_torch_sync_warnings_into_records(monkeypatch):
    """The CUDA branch, with torch's sync debug mode stood in for: every synchronisation warning is one record."""
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with SyncAudit(torch.device("cuda"), DeviceTensors()) as recorder:
        for _ in range(2):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)  # what torch emits per sync
        warnings.warn("an unrelated warning", UserWarning)
    assert modes == ["warn", "default"]
    assert recorder.record.total == 2
    [(reason, site)] = recorder.record.counts
    assert reason == "CUDA synchronisation" and "test_host_syncs.py" in site


def test_a_logger_switched_off_by_a_config_or_an_override_is_seen(tmp_path):
    # The audit gives the logger a scratch save_dir, which jsonargparse refuses for a logger that is off.
    (tmp_path / "off.yaml").write_text("trainer:\n  logger: false\n")
    smoke, off = str(REPO_ROOT / "configs" / "smoke.yaml"), str(tmp_path / "off.yaml")
    assert not host_syncs.logger_is_off(["--config", smoke])
    assert host_syncs.logger_is_off(["--config", smoke, "--config", off])
    assert not host_syncs.logger_is_off(["--config", off, "--trainer.logger=true"])
    assert host_syncs.logger_is_off(["--config", smoke, "--trainer.logger", "null"])
