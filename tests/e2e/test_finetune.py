"""``model.init_from`` through the CLI: weights loaded, tables resized, head replaced, preprocessing applied."""

from __future__ import annotations

import sys

import pytest
import torch
from hub_helpers import TIMM_REPO, cache_repo, timm_repo_files
from safetensors.torch import load_file
from tiny_run import tiny_fit

from cli import CoAtNetCLI
from coatnet import create_model
from coatnet.weights import save_weights
from lightning_modules import export

PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "crop_pct": 0.95}


def test_init_from_loads_weights_and_preprocessing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # the CLI parses ``args`` only
    torch.manual_seed(0)
    source = create_model("coatnet_nano", img_size=64, num_classes=7)
    weights = tmp_path / "nano.safetensors"
    save_weights(weights, source, preprocessing=PREPROCESSING, source="test")

    args = [
        "--config",
        "smoke.yaml",
        f"--model.init_from={weights}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    cli = CoAtNetCLI(args=args, run=False)

    assert tuple(cli.datamodule.mean) == (0.5, 0.5, 0.5) and tuple(cli.datamodule.std) == (0.5, 0.5, 0.5)
    model = cli.model.model
    assert model.config.img_size == (32, 32) and model.config.num_classes == 10
    target = model.state_dict()
    for name, tensor in source.state_dict().items():
        if name.startswith("head.fc."):
            assert target[name].shape[0] == 10  # new classifier for the DataModule's 10 classes
        elif name.endswith("rel_pos.table"):
            assert target[name].shape != tensor.shape  # 64x64 grid resized to the 32x32 one
        else:
            assert torch.equal(target[name], tensor), name


def test_init_from_a_hub_name_downloads_converts_and_brings_its_preprocessing(tmp_path, monkeypatch):
    """`--model.init_from hf-hub:timm/...` with the repository in huggingface_hub's cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(sys, "argv", ["cli.py"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache_repo(tmp_path / "hub", TIMM_REPO, timm_repo_files(tmp_path / "timm"))
    args = [
        "--config", "smoke.yaml", "--model.model_name=coatnet_nano_rw", f"--model.init_from=hf-hub:{TIMM_REPO}",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
    ]  # fmt: skip
    cli = CoAtNetCLI(args=args, run=False)

    assert tuple(cli.datamodule.mean) == (0.5, 0.5, 0.5) and tuple(cli.datamodule.std) == (0.5, 0.5, 0.5)
    stem = cli.model.model.state_dict()["stem.conv1.weight"]
    timm_stem = load_file(tmp_path / "timm" / "model.safetensors")["stem.conv1.weight"]
    assert torch.equal(stem, timm_stem)


@pytest.mark.slow
def test_a_packed_run_checkpoint_fine_tunes_through_init_from(tmp_path, monkeypatch):
    """A real run's last.ckpt -> `export.py --format safetensors` folder -> `--model.init_from FOLDER`."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    ckpt = tiny_fit() / "checkpoints" / "last.ckpt"
    assert export.run(["--ckpt", str(ckpt), "--format", "safetensors", "--output", str(tmp_path / "packed")]) == 0
    args = ["--config", "smoke.yaml", f"--model.init_from={tmp_path / 'packed'}", "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}", "--data.init_args.mean=[0.1,0.1,0.1]"]  # fmt: skip
    cli = CoAtNetCLI(args=args, run=False)

    trained = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert list(cli.datamodule.mean) == trained["data_info"]["mean"]  # the run's preprocessing, not the config's
    loaded = cli.model.model.state_dict()
    network = {k[len("model.") :]: v for k, v in trained["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(loaded[k], v) for k, v in network.items())


def _image_folder_args(weights, crop_pct: float) -> list[str]:
    return [
        "--config",
        "smoke.yaml",
        "--data=datamodules.ImageFolderDataModule",
        "--data.init_args.root=unused",
        "--data.init_args.num_classes=10",
        "--data.init_args.image_size=32",
        f"--data.init_args.crop_pct={crop_pct}",
        "--data.init_args.interpolation=bilinear",
        f"--model.init_from={weights}",
        "--trainer.logger=false",
    ]


def test_weights_preprocessing_replaces_mean_std_interpolation_but_not_a_chosen_crop_pct(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    weights = tmp_path / "nano.safetensors"
    save_weights(weights, create_model("coatnet_nano", img_size=32), preprocessing=PREPROCESSING, source="test")

    chosen = CoAtNetCLI(args=_image_folder_args(weights, crop_pct=1.0), run=False).datamodule  # e.g. 384 px at 1.0
    assert tuple(chosen.mean) == (0.5, 0.5, 0.5) and chosen.interpolation == "bicubic"
    assert chosen.crop_pct == 1.0, "a crop_pct the config sets on purpose is kept"
    default = CoAtNetCLI(args=_image_folder_args(weights, crop_pct=0.875), run=False).datamodule
    assert default.crop_pct == 0.95, "the DataModule's default gives way to the weights' crop_pct"


def test_checkpoint_replaces_init_from_which_may_be_gone(tmp_path, monkeypatch):
    # validate/test/predict/resume of a fine-tuned run must not need (or reload) the original weights file.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    weights = tmp_path / "nano.safetensors"
    save_weights(weights, create_model("coatnet_nano", img_size=32), preprocessing=PREPROCESSING, source="test")
    base = ["--config", "smoke.yaml", "--trainer.logger=false", f"--model.init_from={weights}"]
    module = CoAtNetCLI(args=base, run=False).model
    checkpoint = tmp_path / "run.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": "2.6.0",
        },
        checkpoint,
    )
    weights.unlink()  # moved away after fine-tuning
    args = [
        "validate",
        *base,
        f"--ckpt_path={checkpoint}",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
    ]
    cli = CoAtNetCLI(args=args)
    assert cli.model.hparams.init_from == str(weights), "the run still records where its weights came from"
    assert "val/acc1" in cli.trainer.callback_metrics


def test_a_run_resumed_from_a_packed_folder_or_hub_name_keeps_their_preprocessing(tmp_path, monkeypatch):
    """With --ckpt_path the weights come from the checkpoint, but a folder or hf-hub init_from still sets mean/std."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    folder = tmp_path / "packed"
    folder.mkdir()
    save_weights(folder / "model.safetensors", create_model("coatnet_nano", img_size=32), PREPROCESSING, "test")
    base = ["--config", "smoke.yaml", "--trainer.logger=false", f"--model.init_from={folder}",
            "--data.init_args.mean=[0.1,0.1,0.1]"]  # fmt: skip
    module = CoAtNetCLI(args=base, run=False).model
    checkpoint = tmp_path / "run.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0"}, checkpoint)  # fmt: skip
    args = ["validate", *base, f"--ckpt_path={checkpoint}", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false"]  # fmt: skip
    assert tuple(CoAtNetCLI(args=args).datamodule.mean) == (0.5, 0.5, 0.5)


def test_requeued_fine_tune_resumes_with_last_after_the_weights_file_moved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    weights = tmp_path / "nano.safetensors"
    save_weights(weights, create_model("coatnet_nano", img_size=32), preprocessing=PREPROCESSING, source="test")
    short = [
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--model.init_from={weights}",
    ]
    first = CoAtNetCLI(args=["fit", "--config", "smoke.yaml", *short, "--trainer.max_epochs=1"])
    assert first.trainer.global_step == 2
    weights.unlink()
    config = tmp_path / "logs" / "smoke" / "version_0" / "config.yaml"
    resumed = CoAtNetCLI(
        args=["fit", "--config", str(config), *short[:4], "--trainer.max_epochs=2", "--ckpt_path=last"]
    )
    assert resumed.trainer.global_step == 4, "resumed from last.ckpt, without the moved weights file"
    assert f"init_from: {weights}" in config.read_text(), "the saved config still says where the weights came from"
