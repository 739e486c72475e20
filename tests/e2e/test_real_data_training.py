"""Real images: short CPU runs on a CIFAR-10 JPEG subset must beat chance clearly.

One run uses the image-folder pipeline (CIFAR preset: pad-crop + flip) with the template's own
optimizer and schedule; the other is ``configs/cifar10.yaml`` itself, shrunk to CoAtNet-nano, a
few epochs and 2,000 images, through ``cli.py``. Both validate on images held out of training.
"""

from __future__ import annotations

import sys

import pytest
import torch
from data_helpers import extract_cifar_jpeg_subset
from lightning.pytorch import Trainer, seed_everything

import cli
from bench.scalars import read_scalars
from datamodules import ImageFolderDataModule
from datamodules.augmentation.recipe import TrainAugment
from lightning_modules.classifier import ImageClassifier

pytestmark = pytest.mark.slow

PER_CLASS = 250  # the last 50 of each class are held out: 2,000 training + 500 validation images
HOLDOUT = 50


def adamw_3e3(params) -> torch.optim.Optimizer:
    """A higher peak lr than the ImageNet default suits this short, small-batch run."""
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=0.05)


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
    root = extract_cifar_jpeg_subset(tmp_path_factory.mktemp("cifar_jpeg"), per_class=PER_CLASS)
    if root is None:
        pytest.skip("../shared/data/cifar10-jpeg-train.tar.gz is absent: no real images to train on")
    return root


def test_short_cpu_run_on_real_images_beats_chance(cifar_subset):
    seed_everything(0)
    data = ImageFolderDataModule(
        root=str(cifar_subset),
        num_classes=10,
        preset="cifar",
        val_holdout_per_class=HOLDOUT,
        image_size=32,
        augment=TrainAugment(randaugment_layers=0, color_jitter=0.0),
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        batch_size=64,
        num_workers=0,
    )
    model = ImageClassifier(
        model_name="coatnet_nano",
        num_classes=data.num_classes,
        image_size=data.image_size,
        optimizer=adamw_3e3,
        warmup_steps=20,
        min_lr_ratio=0.05,
        label_smoothing=0.0,
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert data.class_names[:2] == ["airplane", "automobile"]
    assert metrics["val/acc1"].item() >= 0.25, f"10 classes, chance is 0.10: {metrics}"
    assert metrics["val/acc5"].item() > metrics["val/acc1"].item()


def test_cifar10_recipe_shrunk_down_learns_on_real_images(cifar_subset, tmp_path, monkeypatch):
    """The recipe's own augmentation (RandAugment on the device, Mixup/CutMix, label smoothing)
    and schedule, via the image-folder preset; only size, epochs, batch, lr and the CPU settings change."""
    monkeypatch.chdir(tmp_path)
    shrink = [
        "--model.model_name=coatnet_nano",
        "--model.compile=false",
        "--model.warmup_steps=20",
        "--trainer.max_epochs=4",
        "--model.optimizer.init_args.lr=1e-3",  # batch 64 instead of 512; 2e-3 learned more slowly in 4 epochs (0.196)
        f"--data.init_args.root={cifar_subset}",
        f"--data.init_args.holdout_per_class={HOLDOUT}",
        "--data.init_args.batch_size=64",
        "--data.init_args.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--cpu_threads=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ]
    monkeypatch.setattr(
        sys, "argv", ["cli.py", "fit", "--config", "cifar10.yaml", "--config", "cifar10_folder.yaml", *shrink]
    )
    run = cli.main()
    data, metrics = run.datamodule, run.trainer.callback_metrics
    assert type(data).__name__ == "CIFARDataModule" and data.augment.on_device and data.augment.randaugment_layers == 2
    assert len(data.train_set) == 10 * (PER_CLASS - HOLDOUT) and len(data.val_set) == 10 * HOLDOUT
    # chance is 0.10; trial runs reached 0.226-0.238 (the recipe regularises hard for 4 short epochs)
    assert metrics["val/acc1"].item() >= 0.17, f"10 classes, chance is 0.10: {metrics}"
    curves = read_scalars(tmp_path / "logs")
    accuracy = [value for _, value in curves["val/acc1"]]
    losses = [value for _, value in curves["val/loss"]]
    assert len(accuracy) == 4 and accuracy[-1] > accuracy[0] and losses[-1] < losses[0], curves
