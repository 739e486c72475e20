"""The CPU preset configs/cifar10_quick.yaml: its recipe as documented, and a few steps on an image folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, run_cli
from data_helpers import CIFAR10_CLASSES, write_image_folder

from bench.scalars import read_scalars

PRESET = REPO_ROOT / "configs" / "cifar10_quick.yaml"


def test_preset_is_the_documented_cpu_recipe() -> None:
    config = yaml.safe_load(PRESET.read_text())
    trainer, model, data = config["trainer"], config["model"], config["data"]["init_args"]
    assert config["cpu_threads"] == 2 and trainer["accelerator"] == "cpu" and trainer["precision"] == "32-true"
    assert trainer["max_time"] <= "00:00:05:00"
    assert model["model_name"] == "coatnet_nano" and model["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert model["warmup_steps"] > 0 and model.get("mixup_alpha", 0) == 0
    assert config["data"]["class_path"] == "datamodules.cifar.CIFARDataModule"
    assert (data["source"], data["root"], data["val_split"], data["holdout_per_class"]) == (
        "folder",
        "data/cifar10-jpeg",
        "holdout",
        500,
    )


@pytest.mark.slow
def test_preset_trains_a_few_steps_on_a_small_image_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "cifar", "train", CIFAR10_CLASSES, per_class=24, size=(32, 32))
    run_cli(
        [
            "fit",
            "--config",
            "cifar10_quick.yaml",
            f"--data.init_args.root={root}",
            "--data.init_args.holdout_per_class=4",
            "--data.init_args.batch_size=40",
            "--trainer.max_epochs=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        ],
        cwd=tmp_path,
        threads=2,
    )
    run_dir = tmp_path / "logs" / "cifar10_quick" / "version_0"
    scalars = read_scalars(run_dir)
    assert len(scalars["train/loss"]) == 5  # 200 training images (20 per class) in batches of 40
    assert len(scalars["val/acc1"]) == 1 and (run_dir / "checkpoints" / "last.ckpt").is_file()
