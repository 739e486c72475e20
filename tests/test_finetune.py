"""``model.init_from`` through the CLI: weights loaded, tables resized, head replaced, preprocessing applied."""

from __future__ import annotations

import sys

import torch

from cli import CoAtNetCLI, resolve_config_paths
from coatnet import create_model
from coatnet.checkpoint import save_weights


def test_init_from_loads_weights_and_preprocessing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # the CLI parses ``args`` only
    torch.manual_seed(0)
    source = create_model("coatnet_nano", img_size=64, num_classes=7)
    weights = tmp_path / "nano.safetensors"
    preprocessing = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "crop_pct": 0.95}
    save_weights(weights, source, preprocessing=preprocessing, source="test")

    args = resolve_config_paths(["--config", "smoke.yaml"]) + [
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
