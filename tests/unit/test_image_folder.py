"""ImageFolderDataModule on generated JPEG/PNG folders, plus a real-data check on CIFAR-10 JPEGs."""

from __future__ import annotations

import warnings

import pytest
import torch
from data_helpers import CIFAR10_CLASSES, extract_cifar_jpeg_subset, write_image_folder

from datamodules import DatasetError, ImageFolderDataModule
from datamodules.augmentation.recipe import TrainAugment

CLASSES = ["cat", "dog", "fox"]


def _dm(root, **kwargs):
    defaults = dict(root=str(root), num_classes=3, image_size=32, batch_size=4, num_workers=0)
    return ImageFolderDataModule(**{**defaults, **kwargs})


@pytest.fixture
def folder(tmp_path):
    write_image_folder(tmp_path, "train", CLASSES, per_class=4, size=(30, 40))
    write_image_folder(tmp_path, "val", CLASSES, per_class=2, size=(40, 30), fmt="PNG")
    return tmp_path


def test_train_and_val_loaders_yield_uint8_at_image_size(folder):
    dm = _dm(folder, image_size=(32, 64))
    dm.setup("fit")
    assert dm.class_names == CLASSES and len(dm.train_set) == 12 and len(dm.val_set) == 6
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 64) and labels.dtype == torch.int64
    val_images, val_labels = next(iter(dm.val_dataloader()))
    assert val_images.shape == (4, 3, 32, 64) and val_labels.tolist() == [0, 0, 1, 1]


def test_eval_transform_resizes_short_side_then_centre_crops(tmp_path):
    # left half black, right half white: a centre crop of 87.5% keeps the boundary in the middle
    import numpy as np
    from PIL import Image

    image = np.zeros((60, 120, 3), np.uint8)
    image[:, 60:] = 255
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "train" / "a" / "x.png")
    dm = _dm(tmp_path, num_classes=1, val_dir="train", crop_pct=0.5, image_size=64)
    dm.setup()
    out, _ = dm.val_set[0]
    assert out.shape == (3, 64, 64)
    # crop_pct=0.5 on a 60-px short side -> a 30x30 source box around the centre, half black half white
    assert out[:, :, :28].max() < 10 and out[:, :, 36:].min() > 245


def test_holdout_carves_last_files_per_class_from_train(folder):
    dm = _dm(folder, val_holdout_per_class=1, val_dir="does-not-exist")
    dm.setup()
    assert len(dm.train_set) == 9 and len(dm.val_set) == 3
    held = [dm.val_set.source.path(i).rsplit("/", 2)[-2:] for i in range(3)]
    assert held == [["cat", "0003.jpg"], ["dog", "0003.jpg"], ["fox", "0003.jpg"]]
    assert dm.val_set.source.labels.tolist() == [0, 1, 2]


def test_class_count_and_class_lists_are_checked(folder, tmp_path):
    with pytest.raises(DatasetError, match="num_classes=1000 but .* has 3 class folders"):
        _dm(folder, num_classes=1000).setup()
    write_image_folder(folder, "val", ["wolf"], per_class=1)
    with pytest.raises(DatasetError, match=r"only in val: \[wolf\]"):
        _dm(folder).setup()


def test_empty_class_folder_and_missing_root_are_named(folder, tmp_path):
    (folder / "train" / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class contains no images"):
        _dm(folder, num_classes=4).setup()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope' / 'train'} not found.*<class_name>"):
        _dm(tmp_path / "nope").setup()


def test_corrupt_files_are_skipped_with_warning_or_raise(folder):
    bad = folder / "train" / "dog" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    dm = _dm(folder)
    dm.setup()
    with pytest.warns(UserWarning, match="0001.jpg"):
        samples = [dm.train_set[i] for i in range(len(dm.train_set))]
    assert dm.num_corrupt_skipped == 1
    images, _ = dm.train_dataloader().collate_fn(samples)  # train crops are collated as the loader does
    assert images.shape == (len(samples), 3, 32, 32)
    strict = _dm(folder, on_corrupt="error")
    strict.setup()
    with pytest.raises(DatasetError, match=f"cannot decode image {bad}"):
        strict.train_set[5]
    bad.write_bytes(b"not an image")  # no format at all: the reason is plain words, the file is named
    with pytest.raises(DatasetError, match=r"0001\.jpg \(OSError: unknown image format or corrupt header\)"):
        strict.train_set[5]


def test_corrupt_count_is_shared_with_loader_workers(folder):
    (folder / "train" / "cat" / "0002.jpg").write_bytes(b"not an image")
    dm = _dm(folder, num_workers=1, batch_size=12, persistent_workers=False)
    dm.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[0] == 12 and dm.num_corrupt_skipped == 1


def test_cifar_preset_keeps_full_image_with_pad_crop(folder):
    dm = _dm(folder, preset="cifar", augment=TrainAugment(randaugment_layers=0))
    dm.setup()
    out, _ = dm.val_set[0]
    assert out.shape == (3, 32, 32)
    train, _ = dm.train_set[0]
    assert train.shape == (3, 32, 32) and train.dtype == torch.uint8


def test_workers_draw_different_augmentations(folder):
    dm = _dm(
        folder,
        num_workers=2,
        batch_size=1,
        persistent_workers=False,
        augment={"randaugment_layers": 0, "color_jitter": 0.0},
    )
    dm.setup()
    dm.train_set.source = dm.train_set.source.subset([0, 0, 0, 0])  # the same image four times
    batches = [b[0] for b in dm.train_dataloader()]
    assert len(batches) == 4
    # worker 0 serves batches 0 and 2, worker 1 batches 1 and 3: their first crops must differ
    assert not torch.equal(batches[0], batches[1])


def test_real_cifar10_jpegs_with_holdout(tmp_path):
    root = extract_cifar_jpeg_subset(tmp_path, per_class=20)
    if root is None:
        pytest.skip("shared CIFAR-10 JPEG tarball not found (../shared/data or $COATNET_SHARED_DATA)")
    dm = ImageFolderDataModule(
        root=str(root),
        num_classes=10,
        image_size=32,
        val_holdout_per_class=5,
        preset="cifar",
        num_workers=0,
        batch_size=50,
    )
    dm.setup()
    assert dm.class_names == CIFAR10_CLASSES
    assert len(dm.train_set) == 150 and len(dm.val_set) == 50
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (50, 3, 32, 32) and sorted(set(labels.tolist())) == list(range(10))
    assert 40 < images.float().mean().item() < 220 and dm.num_corrupt_skipped == 0


def _scan_warnings(dm) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    return [str(w.message) for w in caught]


def test_links_outside_the_root_are_skipped_with_one_warning(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    for i in range(3):
        (elsewhere / f"{i}.jpg").write_bytes((folder / "train" / "cat" / "0000.jpg").read_bytes())
        (folder / "train" / "dog" / f"link{i}.jpg").symlink_to(elsewhere / f"{i}.jpg")
    (folder / "train" / "fox" / "inside.jpg").symlink_to(folder / "val" / "fox" / "0000.png")  # within the root: kept
    (folder / "train" / "fox" / "gone.jpg").symlink_to(folder / "missing.jpg")
    dm = _dm(folder)
    messages = _scan_warnings(dm)
    outside = [m for m in messages if "point outside" in m]
    assert len(outside) == 1 and "3 image links that point outside" in outside[0] and "are skipped" in outside[0]
    assert "link0.jpg -> " in outside[0] and str(elsewhere) in outside[0]
    assert any("1 image links whose target is missing" in m and "gone.jpg" in m for m in messages)
    names = [dm.train_set.source.path(i).rsplit("/", 1)[1] for i in range(len(dm.train_set))]
    assert len(names) == 13 and not any(n.startswith("link") for n in names) and "inside.jpg" in names


def test_images_in_sub_folders_of_a_class_are_reported_as_skipped(folder):
    nested = folder / "train" / "cat" / "more" / "deeper"
    nested.mkdir(parents=True)
    for i in range(2):
        (nested / f"{i}.jpg").write_bytes((folder / "train" / "cat" / "0000.jpg").read_bytes())
    (nested.parent / "notes.txt").write_text("not an image")
    dm = _dm(folder)
    messages = [m for m in _scan_warnings(dm) if "sub-folders" in m]
    assert len(messages) == 1 and "2 images in sub-folders of class folders are skipped" in messages[0]
    assert str(nested / "0.jpg") in messages[0]
    assert len(dm.train_set) == 12
