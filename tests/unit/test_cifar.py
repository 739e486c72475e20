"""CIFAR DataModule on tiny fake data in the official pickle layout and as an image folder, and its download path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from data_helpers import (
    CIFAR10_CLASSES,
    make_tar_gz,
    serve_directory,
    write_fake_cifar,
    write_image_folder,
)
from PIL import Image

from datamodules import CIFARDataModule, DatasetError
from datamodules.augmentation.recipe import TrainAugment
from datamodules.augmentation.tensor_ops import pad_crop_flip
from datamodules.sources.cifar_release import holdout_indices
from datamodules.sources.download import file_md5


@pytest.fixture
def cifar10(tmp_path):
    arrays = write_fake_cifar(tmp_path, "cifar10", train_per_class=6, test_per_class=2)
    return tmp_path, arrays


def test_loads_official_layout_with_labels_matching_images(cifar10):
    root, arrays = cifar10
    dm = CIFARDataModule(variant="cifar10", root=str(root), batch_size=8, num_workers=0)
    dm.setup("fit")
    assert dm.class_names == [f"class_{i:03d}" for i in range(10)]
    assert len(dm.train_set) == 60 and len(dm.val_set) == 20 and len(dm.test_set) == 20
    assert torch.equal(dm.train_set.images.reshape(60, -1), torch.from_numpy(arrays["train_x"]))
    # the writer stores each label in pixel (0, 0) of the red plane
    assert torch.equal(dm.train_set.images[:, 0, 0, 0].long(), dm.train_set.labels)
    images, labels = next(iter(dm.val_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    train_images, _ = next(iter(dm.train_dataloader()))
    assert train_images.dtype == torch.uint8 and train_images.shape == (8, 3, 32, 32)


def test_cifar100_uses_fine_labels(tmp_path):
    write_fake_cifar(tmp_path, "cifar100", train_per_class=2, test_per_class=1)
    dm = CIFARDataModule(variant="cifar100", root=str(tmp_path), num_workers=0)
    dm.setup()
    assert dm.num_classes == 100 and len(dm.class_names) == 100
    assert dm.train_set.labels.max().item() == 99
    assert torch.equal(dm.train_set.images[:, 0, 0, 0].long(), dm.train_set.labels)


def test_holdout_takes_last_images_of_each_class_from_train(cifar10):
    root, arrays = cifar10
    dm = CIFARDataModule(variant="cifar10", root=str(root), val_split="holdout", holdout_per_class=2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 40 and len(dm.val_set) == 20 and len(dm.test_set) == 20
    assert torch.bincount(dm.val_set.labels).tolist() == [2] * 10
    # labels repeat 0..9, so the last two images of each class are the last 20 rows
    assert torch.equal(dm.val_set.images.reshape(20, -1), torch.from_numpy(arrays["train_x"][-20:]))
    train_rows = {tuple(r.tolist()) for r in dm.train_set.images.reshape(40, -1)[:, :8]}
    assert not train_rows & {tuple(r.tolist()) for r in dm.val_set.images.reshape(20, -1)[:, :8]}
    with pytest.raises(DatasetError, match=r"class 0 \(class_000\) has 6 training images, cannot hold out 6"):
        bad = CIFARDataModule(root=str(root), val_split="holdout", holdout_per_class=6)
        bad.setup()


def test_holdout_error_names_the_class_when_names_are_known(tmp_path):
    labels = torch.tensor([0, 0, 0, 1])
    with pytest.raises(DatasetError, match=r"^class 1 \(deer\) has 1 training images, cannot hold out 1; lower"):
        holdout_indices(labels, 1, 2, ["cat", "deer"])
    with pytest.raises(DatasetError, match=r"^class 1 has 1 training images"):
        holdout_indices(labels, 1, 2)
    _png_folder(tmp_path, "train", per_class=1)
    with pytest.raises(DatasetError, match=r"class 0 \(airplane\) has 1 training images"):
        CIFARDataModule(source="folder", root=str(tmp_path), val_split="holdout", holdout_per_class=1).setup()


def test_augment_on_device_moves_the_whole_policy_out_of_the_loader(cifar10):
    root, _ = cifar10
    dm = CIFARDataModule(
        variant="cifar10",
        root=str(root),
        augment=TrainAugment(randaugment_layers=2, random_erasing=0.5),
        batch_size=60,
        num_workers=0,
        image_size=64,
    )
    dm.setup()
    raw, labels = next(iter(dm.train_dataloader()))
    by_label = {int(label): dm.train_set.images[dm.train_set.labels == label] for label in labels}
    # the loader yields untouched images ...
    assert all(any(torch.equal(img, cand) for cand in by_label[int(label)]) for img, label in zip(raw, labels))
    torch.manual_seed(0)
    train_out = dm.device_transform(raw, train=True)
    eval_out = dm.device_transform(raw, train=False)
    assert train_out.shape == eval_out.shape == (60, 3, 64, 64)
    assert not torch.equal(train_out, eval_out)  # ... and the device step augments only in training
    normalised, _ = dm.on_after_batch_transfer((raw, labels), 0)  # no trainer: eval behaviour
    torch.testing.assert_close(normalised, dm.normalize(eval_out))


def test_device_randaugment_runs_only_when_asked(cifar10):
    root, _ = cifar10
    images = CIFARDataModule(root=str(root), num_workers=0)
    images.setup()
    raw = images.train_set.images[:60]

    def device_output(layers: int) -> torch.Tensor:
        dm = CIFARDataModule(
            root=str(root),
            num_workers=0,
            augment=TrainAugment(randaugment_layers=layers, randaugment_magnitude=10, crop_padding=0, hflip=0.0),
        )
        torch.manual_seed(0)
        return dm.device_transform(raw, train=True)

    assert torch.equal(device_output(0), raw)  # no padding, no flip, no policy: untouched
    augmented = device_output(2)
    changed = (augmented != raw).flatten(1).any(1)
    assert augmented.dtype == torch.uint8 and changed.float().mean() > 0.5


def test_pad_crop_flip_is_a_shifted_or_mirrored_copy():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    out = pad_crop_flip(x, padding=2, pad_mode="zero", flip_p=0.5)
    flipped, shifted = 0, 0
    for a, b in zip(x, out):
        matched = False
        for flip in (False, True):
            src = a.flip(-1) if flip else a
            padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
            for dy in range(5):
                for dx in range(5):
                    if torch.equal(padded[:, dy : dy + 8, dx : dx + 8], b):
                        matched, flipped, shifted = True, flipped + flip, shifted + ((dy, dx) != (2, 2))
        assert matched
    assert 60 < flipped < 140 and shifted > 150


def test_missing_files_error_names_path_and_download_flag(tmp_path):
    dm = CIFARDataModule(variant="cifar10", root=str(tmp_path))
    with pytest.raises(DatasetError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "download=True" in message and "test_batch" in message


def _release_archive(tmp_path, corrupt: bool = False):
    source = tmp_path / "src"
    write_fake_cifar(source, "cifar10", train_per_class=1, test_per_class=1)
    served = tmp_path / "served"
    served.mkdir()
    archive = make_tar_gz(source / "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    md5 = file_md5(archive)
    if corrupt:
        archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    return served, md5


def test_download_verifies_md5_and_extracts(tmp_path):
    served, md5 = _release_archive(tmp_path)
    root = tmp_path / "data"
    with serve_directory(served) as base:
        dm = CIFARDataModule(
            variant="cifar10",
            root=str(root),
            download=True,
            download_url=f"{base}/cifar-10-python.tar.gz",
            download_md5=md5,
        )
        dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 10 and len(dm.test_set) == 10
    assert (root / "cifar-10-python.tar.gz").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files or staging dirs left


def test_download_with_bad_checksum_fails_clearly_and_leaves_nothing(tmp_path):
    served, md5 = _release_archive(tmp_path, corrupt=True)
    root = tmp_path / "data"
    with serve_directory(served) as base:
        dm = CIFARDataModule(
            variant="cifar10",
            root=str(root),
            download=True,
            download_url=f"{base}/cifar-10-python.tar.gz",
            download_md5=md5,
        )
        with pytest.raises(DatasetError, match=f"checksum mismatch.*expected md5 {md5}"):
            dm.prepare_data()
    assert list(root.iterdir()) == []


def test_archive_with_path_traversal_is_refused(tmp_path):
    import tarfile

    served = tmp_path / "served"
    served.mkdir()
    evil = tmp_path / "evil.txt"
    evil.write_text("x")
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(evil, arcname="../escaped.txt")
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archive, root / archive.name)
    dm = CIFARDataModule(
        variant="cifar10",
        root=str(root),
        download_md5=file_md5(archive),
        download_url="http://127.0.0.1:9/cifar-10-python.tar.gz",
    )
    with pytest.raises(DatasetError, match="unsafe archive entry"):
        dm.prepare_data()
    assert not (tmp_path / "escaped.txt").exists()


def test_malicious_pickle_is_not_executed(tmp_path):
    import pickle

    write_fake_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1)

    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "cifar-10-batches-py"),))

    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(Exploit()))
    dm = CIFARDataModule(variant="cifar10", root=str(tmp_path))
    with pytest.raises(DatasetError, match="not a valid CIFAR pickle"):
        dm.setup()
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_1").exists()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda y: [*y[:-1], 10], r"data_batch_3: image 1 has label 10, outside 0\.\.9; the file is damaged"),
        (lambda y: [-1, *y[1:]], r"data_batch_3: image 0 has label -1, outside 0\.\.9"),
        (lambda y: y[:-1], r"data_batch_3 holds 2 images but 1 labels"),
    ],
)
def test_bad_labels_in_a_batch_file_are_named_with_the_file(tmp_path, labels, message):
    import pickle

    write_fake_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    entry = pickle.loads(path.read_bytes(), encoding="bytes")
    entry[b"labels"] = labels(entry[b"labels"])
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DatasetError, match=message):
        CIFARDataModule(variant="cifar10", root=str(tmp_path)).setup()


# ----------------------------------------------------------------------------- image-folder copy


def _png_folder(root, split: str, per_class: int, size=(32, 32)):
    """Lossless PNGs so decoded pixels can be compared exactly with what was written."""
    return write_image_folder(root, split, CIFAR10_CLASSES, per_class, size=size, fmt="PNG")


def test_folder_source_decodes_into_memory_with_sorted_class_labels(tmp_path):
    _png_folder(tmp_path, "train", per_class=4)
    dm = CIFARDataModule(source="folder", root=str(tmp_path), val_split="holdout", holdout_per_class=1, num_workers=0)
    dm.setup()
    assert dm.class_names == sorted(CIFAR10_CLASSES)
    assert len(dm.train_set) == 30 and len(dm.val_set) == 10 and dm.test_set is None
    assert torch.bincount(dm.val_set.labels).tolist() == [1] * 10
    # the holdout is the last file (sorted) of each class, decoded exactly
    deer = dm.class_names.index("deer")
    held = dm.val_set.images[dm.val_set.labels == deer][0]
    written = np.array(Image.open(tmp_path / "train" / "deer" / "0003.png").convert("RGB"))
    assert torch.equal(held, torch.from_numpy(written).permute(2, 0, 1))
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape[1:] == (3, 32, 32)
    with pytest.warns(UserWarning, match="no test/ or val/ folder"):
        images, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (10, 3, 32, 32)


def test_folder_source_uses_test_folder_and_checks_it(tmp_path):
    _png_folder(tmp_path, "train", per_class=2)
    _png_folder(tmp_path, "test", per_class=1)
    dm = CIFARDataModule(source="folder", root=str(tmp_path), val_split="test", num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 20 and len(dm.val_set) == 10 and dm.test_set is dm.val_set
    shutil.rmtree(tmp_path / "test" / "ship")
    with pytest.raises(DatasetError, match="class folders differ"):
        CIFARDataModule(source="folder", root=str(tmp_path), val_split="test").setup()


def test_folder_source_errors_name_the_problem_and_the_fix(tmp_path):
    _png_folder(tmp_path, "train", per_class=2)
    with pytest.raises(DatasetError, match="val_split: holdout"):
        CIFARDataModule(source="folder", root=str(tmp_path), val_split="test").setup()
    with pytest.raises(DatasetError, match="100 classes but .* has 10 class folders"):
        CIFARDataModule(variant="cifar100", source="folder", root=str(tmp_path), val_split="holdout").setup()
    (tmp_path / "train" / "cat" / "0000.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetError, match="cannot decode .*0000.png.*replace or delete"):
        CIFARDataModule(
            source="folder", root=str(tmp_path), val_split="holdout", holdout_per_class=1, on_corrupt="error"
        ).setup()
    big = tmp_path / "big"
    _png_folder(big, "train", per_class=2, size=(40, 40))
    with pytest.raises(DatasetError, match="40x40 pixels.*ImageFolderDataModule"):
        CIFARDataModule(source="folder", root=str(big), val_split="holdout", holdout_per_class=1).setup()
    with pytest.raises(ValueError, match="source must be"):
        CIFARDataModule(source="lmdb")
    with pytest.raises(ValueError, match="on_corrupt must be 'skip' or 'error', got 'ignore'"):
        CIFARDataModule(source="folder", on_corrupt="ignore")
