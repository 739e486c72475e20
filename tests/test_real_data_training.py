"""Real images: a short CPU run on a CIFAR-10 JPEG subset must beat chance clearly.

Uses the image-folder pipeline (CIFAR preset: pad-crop + flip) with validation held out from the
training folders, CoAtNet-nano and the template's own optimizer and schedule.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from data_helpers import extract_cifar_jpeg_subset
from datamodules import ImageFolderDataModule
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
        randaugment_layers=0,
        color_jitter=0.0,
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
