"""Portable weights files (save/load, atomic writes, preprocessing) and load_for_finetune."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from coatnet import create_model, resize_table
from coatnet.errors import CheckpointError
from coatnet.weights import (
    FORMAT,
    load_for_finetune,
    load_weights,
    preprocessing_of,
    save_weights,
)

PRE = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "crop_pct": 0.9}
CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return create_model("coatnet_nano", num_classes=10, img_size=32).eval()


def test_weights_files_are_one_module():
    """Reading, loading and the project's format live in coatnet.weights; "checkpoint" is Lightning's .ckpt only."""
    from coatnet import weights

    for name in ("read_torch_file", "load_state_dict_file", "build_uninitialised", "load_mapped", "save_weights",
                 "load_weights", "load_for_finetune", "preprocessing_of"):  # fmt: skip
        assert callable(getattr(weights, name)), name
    package = Path(weights.__file__).parent
    assert [old for old in ("checkpoint.py", "weights_io.py", "loading.py") if (package / old).exists()] == []


def _images(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_is_exact_and_atomic(tmp_path, source, suffix):
    path = save_weights(tmp_path / f"w{suffix}", source, PRE, {"run": "test"}, CLASSES, variant="coatnet_nano")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "readable by others, as a plain open() would make it"
    model, meta = load_weights(path)
    assert meta["format"] == FORMAT and meta["variant"] == "coatnet_nano" and meta["class_names"] == CLASSES
    assert meta["preprocessing"] == PRE and meta["source"] == {"run": "test"}
    assert model.config == source.config and not model.training
    x = _images(32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert preprocessing_of(path) == PRE


def test_failed_write_keeps_the_old_file(tmp_path, source, monkeypatch):
    path = save_weights(tmp_path / "w.pth", source, PRE, "first")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_weights(path, source, PRE, "second")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def test_save_validates_preprocessing_and_class_names(tmp_path, source):
    with pytest.raises(ValueError, match="crop_pct"):
        save_weights(tmp_path / "w.pth", source, {"mean": (0,) * 3, "std": (1,) * 3, "interpolation": "x"}, "s")
    with pytest.raises(ValueError, match="3 class names"):
        save_weights(tmp_path / "w.pth", source, PRE, "s", class_names=["a", "b", "c"])
    assert not list(tmp_path.iterdir())


def test_finetune_to_new_classes_and_size(tmp_path, source):
    path = save_weights(tmp_path / "w.safetensors", source, PRE, "s")
    target = create_model("coatnet_nano", num_classes=5, img_size=64)
    fresh_fc = target.head.fc.weight.detach().clone()
    report = load_for_finetune(target, path)
    tables = [k for k in source.state_dict() if k.endswith("rel_pos.table")]
    assert report.reinitialised == ["head.fc.weight", "head.fc.bias"]
    assert sorted(report.resized) == sorted(tables) and tables
    assert len(report.loaded) == len(source.state_dict()) - len(tables) - 2
    assert torch.equal(target.head.fc.weight, fresh_fc)
    assert torch.equal(target.stem.conv1.weight, source.stem.conv1.weight)
    key = "stages.2.0.attn.rel_pos.table"
    expected = resize_table(source.state_dict()[key], (2, 2), (4, 4))
    assert torch.equal(target.state_dict()[key], expected)
    assert target(_images(64)).shape == (2, 5)
    text = str(report)
    assert str(path) in text and "resized" in text and "head.fc.weight" in text and len(text.splitlines()) <= 4


def test_finetune_from_lightning_checkpoint(tmp_path, source):
    state_dict = {f"model._orig_mod.{k}": v for k, v in source.state_dict().items()}
    state_dict["mixer.generator_state"] = torch.zeros(3)  # other LightningModule state is ignored
    torch.save({"epoch": 3, "state_dict": state_dict, "pytorch-lightning_version": "2.6.6"}, tmp_path / "last.ckpt")
    target = create_model("coatnet_nano", num_classes=10, img_size=32)
    report = load_for_finetune(target, tmp_path / "last.ckpt")
    assert not report.resized and not report.reinitialised
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    assert preprocessing_of(tmp_path / "last.ckpt") is None


def test_finetune_from_timm_state_dict(tmp_path):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model("coatnet_rmlp_nano_rw_224", num_classes=10, img_size=64, depths=(1, 1, 2, 1))
    torch.save(theirs.state_dict(), tmp_path / "timm.pth")
    target = create_model("coatnet_rmlp_nano_rw", num_classes=3, img_size=96, depths=(1, 1, 2, 1)).eval()
    report = load_for_finetune(target, tmp_path / "timm.pth")
    assert report.reinitialised == ["head.fc.weight", "head.fc.bias"] and not report.resized
    theirs.reset_classifier(3)
    theirs.head.fc.load_state_dict(target.head.fc.state_dict())
    theirs.set_input_size(img_size=(96, 96))
    x = _images(96)
    with torch.no_grad():
        assert (target(x) - theirs.eval()(x)).abs().max() < 1e-4


def test_finetune_mismatch_is_a_short_error(tmp_path, source):
    path = save_weights(tmp_path / "w.pth", source, PRE, "s")
    target = create_model("coatnet_nano", num_classes=10, img_size=32, widths=(32, 64, 128, 512))
    with pytest.raises(CheckpointError) as err:
        load_for_finetune(target, path)
    lines = str(err.value).splitlines()
    assert "w.pth" in lines[0] and len(lines) <= 10 and any("shape" in line for line in lines)


def test_load_weights_needs_the_project_format(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "raw.pth")
    with pytest.raises(CheckpointError, match="load_for_finetune"):
        load_weights(tmp_path / "raw.pth")
    assert preprocessing_of(tmp_path / "raw.pth") is None
