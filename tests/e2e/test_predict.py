"""``cli.py predict`` on image files: a CSV row per file, errors reported, checkpoint preprocessing used."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import run_cli
from lightning.pytorch import Trainer
from PIL import Image
from tiny_run import QUIET, tiny_fit
from torch.utils.data import DataLoader, TensorDataset

from datamodules import (
    CIFARDataModule,
    ImageFolderDataModule,
    PredictFilesDataModule,
    SyntheticDataModule,
)
from datamodules.predict_files import list_image_files
from lightning_modules.classifier import ImageClassifier
from lightning_modules.export import load_checkpoint
from lightning_modules.prediction import csv_header, data_info


def _write_inputs(folder):
    """Three exact smoke validation images (lossless PNG), odd-sized/odd-mode files, a corrupt one, a list file."""
    data = SyntheticDataModule(num_classes=10, image_size=32, train_size=0, val_size=3, test_size=0, seed=0)
    data.setup()
    exact = folder / "exact"
    exact.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(data.val_set[i][0].permute(1, 2, 0).numpy()).save(exact / f"val{i}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 50), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)).save(folder / "alpha.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")  # cv2.error escaped the loader: the CSV kept only its header
    (folder / "more.txt").write_text("grey.png\n# comments are skipped\nnot_there.png\n")
    return data


@pytest.mark.slow
def test_predict_writes_csv_rows_for_every_file(tmp_path):
    version = tiny_fit()
    ckpt = version / "checkpoints" / "last.ckpt"
    data = _write_inputs(tmp_path / "in")
    output = tmp_path / "out" / "predictions.csv"
    run_cli(
        [
            "predict", "--config", version / "config.yaml", f"--ckpt_path={ckpt}",
            "--data", "datamodules.PredictFilesDataModule", f"--data.checkpoint={ckpt}",
            f"--data.paths=[{tmp_path / 'in'}, {tmp_path / 'in' / 'more.txt'}]", "--data.batch_size=4",
            "--trainer.callbacks+=lightning_modules.prediction.CsvPredictionWriter",
            f"--trainer.callbacks.output={output}",
            "--trainer.logger=false", *QUIET,
        ],
        cwd=tmp_path,
    )  # fmt: skip
    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == csv_header(5)
    names = {row["path"].replace(str(tmp_path / "in") + "/", ""): row for row in rows}
    expected = {"alpha.png", "corrupt.jpg", "empty.png", "grey.png", "photo.jpg"}
    expected |= {"exact/val0.png", "exact/val1.png", "exact/val2.png"}
    assert set(names) == expected | {"not_there.png"} and len(rows) == 10, "grey.png is listed twice"
    assert names["empty.png"]["error"] == "empty file (0 bytes)"
    for name in ("corrupt.jpg", "empty.png", "not_there.png"):
        assert names[name]["error"] and not names[name]["top1_class"]
    good = [row for row in rows if not row["error"]]
    assert len(good) == 7
    for row in good:
        probs = [float(row[f"top{i}_prob"]) for i in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-5
        assert row["top1_class"].startswith("pattern_")

    # The exact validation images must score as the trained network scores them in memory.
    model, _ = load_checkpoint(ckpt)
    images = torch.stack([data.val_set[i][0] for i in range(3)])
    with torch.no_grad():
        probs, classes = model(data.normalize(images)).softmax(-1).max(-1)
    for i in range(3):
        row = names[f"exact/val{i}.png"]
        assert row["top1_class"] == f"pattern_{classes[i]}"
        assert float(row["top1_prob"]) == pytest.approx(float(probs[i]), abs=1e-5)


def test_checkpoint_data_info_drives_preprocessing(tmp_path):
    folder = ImageFolderDataModule(
        root=str(tmp_path), num_classes=3, image_size=64, crop_pct=0.9, interpolation="bilinear"
    )
    folder.class_names = ["cat", "dog", "eel"]
    info = data_info(folder)
    assert info["resize"] == "center_crop" and info["crop_pct"] == 0.9 and info["interpolation"] == "bilinear"
    cifar_preset = ImageFolderDataModule(root=str(tmp_path), num_classes=3, image_size=32, preset="cifar")
    assert data_info(cifar_preset)["resize"] == "resize"
    cifar = CIFARDataModule(root=str(tmp_path), image_size=64)
    assert data_info(cifar)["interpolation"] == "bilinear", "predict must upsample as training did"
    ckpt = tmp_path / "fake.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 3, "image_size": (64, 64)}, "data_info": info}, ckpt)
    predict = PredictFilesDataModule(paths=[str(tmp_path)], checkpoint=str(ckpt))
    assert predict.class_names == ["cat", "dog", "eel"] and predict.image_size == (64, 64)
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 100:200] = 255  # centre square white: the centre crop keeps it, a plain resize would squash it
    out = predict.eval_transform()(image)
    assert out.shape == (3, 64, 64) and out.float().mean() > 200


def test_list_image_files_expands_folders_and_lists(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.md", "a/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("a/1.jpg\n\nx.webp\n")
    files = list_image_files([str(tmp_path / "a"), str(tmp_path / "list.txt"), "odd.bin"])
    assert files == [
        str(tmp_path / "a/1.jpg"),
        str(tmp_path / "a/b/2.PNG"),
        str(tmp_path / "a/1.jpg"),
        str(tmp_path / "x.webp"),
        "odd.bin",
    ]


def test_predict_runs_the_batchnorm_folded_copy_and_leaves_the_trained_network_alone():
    module = ImageClassifier(model_name="coatnet_nano", num_classes=10, image_size=(32, 32), channels_last=True)
    for norm in module.model.modules():  # statistics as after training, so folding has something to fold
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        expected = module.model.eval()(images).softmax(-1).topk(5, dim=-1)
    calls = []
    norms = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.register_forward_hook(lambda *_: calls.append(1))
    names = set(module.state_dict())
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, DataLoader(TensorDataset(images, torch.zeros(6, dtype=torch.long)), batch_size=3))
    assert not calls, "predict ran the BatchNorms"
    probs = torch.cat([b["probs"] for b in batches])
    assert torch.equal(torch.cat([b["classes"] for b in batches]), expected.indices)
    torch.testing.assert_close(probs, expected.values, atol=1e-5, rtol=0)
    assert set(module.state_dict()) == names and module._predict_model is None
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.model.modules()) == len(norms) > 0
