"""Tar shards: the writer, the cached index, random-access reads, the shard-order sampler and the DataModule."""

from __future__ import annotations

import io
import pickle
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_image_folder

import datamodules.sources.tar_shards as tar_shards
from datamodules import DatasetError, ImageFolderDataModule
from datamodules.augmentation.recipe import TrainAugment
from datamodules.sampling.shard_sampler import ShardOrderSampler
from datamodules.sources.shard_writer import main as shard_writer_main
from datamodules.sources.shard_writer import write_shards
from datamodules.sources.tar_shards import TarShards

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def shards(tmp_path):
    """15 train images in 4 shuffled shards and 6 val images in 2 shards in folder order, beside their folders."""
    folder = write_image_folder(tmp_path / "folder", "train", CLASSES, per_class=5, size=(30, 40))
    write_image_folder(folder, "val", CLASSES, per_class=2, size=(40, 30), fmt="PNG")
    out = tmp_path / "shards"
    write_shards(folder / "train", out, "train", samples_per_shard=4)
    shard_writer_main([str(folder / "val"), str(out), "--prefix", "val", "--samples-per-shard", "3", "--no-shuffle"])
    return folder, out


def _source_files(split_dir: Path) -> dict[bytes, int]:
    return {path.read_bytes(): CLASSES.index(path.parent.name) for path in sorted(split_dir.glob("*/*"))}


def test_writer_round_trip_gives_every_image_once_with_its_label(shards):
    folder, out = shards
    source = TarShards.open(out, "train-*.tar")
    assert [Path(s).name for s in source.shards] == [f"train-{n:06d}.tar" for n in range(4)]
    assert source.shard_sizes.tolist() == [4, 4, 4, 3]
    expected = _source_files(folder / "train")
    read = {source.read(i).tobytes(): int(source.labels[i]) for i in range(len(source))}
    assert read == expected and len(source) == len(expected)
    assert source.labels.tolist() != sorted(source.labels.tolist()), "the writer should mix the classes"
    assert (out / "classes.txt").read_text().split() == CLASSES
    assert source.name(0).endswith("train-000000.tar:00000000")


def test_index_is_cached_and_rebuilt_only_for_a_changed_shard(shards, monkeypatch):
    _, out = shards
    TarShards.open(out, "train-*.tar")
    assert len(list(out.glob("train-*.tar.idx.npz"))) == 4
    scanned: list[str] = []
    real_scan = tar_shards.scan_shard
    monkeypatch.setattr(tar_shards, "scan_shard", lambda shard: scanned.append(shard.name) or real_scan(shard))
    TarShards.open(out, "train-*.tar")
    assert scanned == []
    changed = out / "train-000002.tar"
    changed.write_bytes(changed.read_bytes())  # same content, new mtime: the index is stale
    again = TarShards.open(out, "train-*.tar")
    assert scanned == ["train-000002.tar"] and len(again) == 15


def test_read_only_shard_folder_caches_indexes_in_the_user_cache(shards, tmp_path, monkeypatch):
    _, out = shards
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_write = tar_shards.write_index

    def read_only_beside_shards(path, shard, index):
        if path.parent == out:
            raise PermissionError(13, "Permission denied")
        real_write(path, shard, index)

    monkeypatch.setattr(tar_shards, "write_index", read_only_beside_shards)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback is silent
        TarShards.open(out, "val-*.tar")
    cached = sorted(p.name for p in (tmp_path / "cache" / "coatnet" / "shard_index").glob("*/*.idx.npz"))
    assert cached == ["val-000000.tar.idx.npz", "val-000001.tar.idx.npz"] and not list(out.glob("val-*.idx.npz"))
    monkeypatch.setattr(tar_shards, "scan_shard", lambda shard: pytest.fail(f"{shard} scanned again"))
    assert len(TarShards.open(out, "val-*.tar")) == 6


def test_unwritable_index_dir_warns_and_still_reads(shards, tmp_path):
    _, out = shards
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="cannot cache shard indexes.*shard_index_dir"):
        source = TarShards.open(out, "val-*.tar", index_dir=blocker / "sub")
    assert len(source) == 6


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_tar_with_long_names_and_extra_members_is_read(tmp_path):
    long_key = "n01440764/" + "x" * 120  # past ustar's 100-character names: a pax header precedes it
    image_a, image_b = b"\xff\xd8\xff" + b"a" * 700, b"\x89PNG" + b"b" * 300
    _tar(
        tmp_path / "imagenet1k-train-0000.tar",
        [
            (f"{long_key}.jpg", image_a),
            (f"{long_key}.cls", b"7\n"),
            (f"{long_key}.json", b'{"label": 7}'),
            ("n2/plain.PNG", image_b),
            ("n2/plain.cls", b"3"),
        ],
    )
    source = TarShards.open(tmp_path, "imagenet1k-train-*.tar")
    assert [source.read(i).tobytes() for i in range(2)] == [image_a, image_b]
    assert source.labels.tolist() == [7, 3] and source.name(0).endswith(f"{long_key}")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("a.jpg", b"x")], r"sample 'a'.*no \.cls member"),
        ([("a.jpg", b"x"), ("a.cls", b"dog")], r"a\.cls holds b'dog', not a class id"),
        ([("a.txt", b"x")], "holds no images"),
        (
            [("b.jpg", b"x"), ("b.cls", b"1"), ("b.jpg", b"y"), ("b.cls", b"1")],
            r"s-0\.tar: sample 'b' has a second image",
        ),
        ([("b.jpg", b"x"), ("b.cls", b"1"), ("b.cls", b"2")], r"s-0\.tar: sample 'b' has a second label"),
        (
            [("d/b.jpg", b"x"), ("d/b.png", b"y"), ("d/b.cls", b"2")],
            r"sample 'd/b' has a second image member \(d/b\.png\)",
        ),
    ],
)
def test_malformed_shards_are_named_with_the_fix(tmp_path, members, message):
    _tar(tmp_path / "s-0.tar", members)
    with pytest.raises(DatasetError, match=message):
        TarShards.open(tmp_path, "s-*.tar")


def test_missing_and_corrupt_shards_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"no tar shards match .*nothing-\*\.tar"):
        TarShards.open(tmp_path, "nothing-*.tar")
    (tmp_path / "bad-0.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(DatasetError, match=r"bad-0\.tar is not a readable tar file"):
        TarShards.open(tmp_path, "bad-*.tar")


def test_truncated_shard_read_raises_oserror_for_the_corrupt_policy(shards):
    _, out = shards
    source = TarShards.open(out, "train-000003.tar")
    last = out / "train-000003.tar"
    last.write_bytes(last.read_bytes()[: int(source.offsets[-1]) + 10])
    with pytest.raises(OSError, match="truncated"):
        source.read(len(source) - 1)


def test_source_survives_pickling_with_open_descriptors(shards):
    _, out = shards
    source = TarShards.open(out, "train-*.tar")
    first = source.read(0).tobytes()
    copy = pickle.loads(pickle.dumps(source))
    assert copy.read(0).tobytes() == first


SIZES = [5, 7, 3, 6, 4, 8]  # 33 samples


def _runs(sampler: ShardOrderSampler, world: int, epoch: int = 0) -> list[list[int]]:
    out = []
    for rank in range(world):
        sampler.rank = rank
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_sampler_gives_each_rank_an_equal_disjoint_run_of_whole_shards():
    shard_of = np.repeat(np.arange(len(SIZES)), SIZES)
    sampler = ShardOrderSampler(SIZES, num_replicas=3, shuffle=True, seed=1, drop_last=True, window_shards=2)
    ranks = _runs(sampler, 3)
    assert [len(r) for r in ranks] == [11, 11, 11]
    assert len(set().union(*map(set, ranks))) == 33 and sum(map(len, ranks)) == 33
    # a contiguous run of the shuffled shard order: 11 samples span at most 4 of the 6 shards
    assert all(len(set(shard_of[r])) <= 4 for r in ranks)
    assert ranks != _runs(sampler, 3, epoch=1), "the order must change between epochs"
    again = ShardOrderSampler(SIZES, num_replicas=3, shuffle=True, seed=1, drop_last=True, window_shards=2)
    assert _runs(again, 3) == ranks, "the order must depend only on (seed, epoch)"
    assert [sorted(r) for r in ranks] != [sorted(r) for r in _runs(sampler, 3, epoch=1)], "shards move between ranks"


def test_eval_order_covers_every_sample_and_pads_like_distributed_sampler():
    one = ShardOrderSampler(SIZES, num_replicas=1, shuffle=False)
    assert list(one) == list(range(33))
    four = _runs(ShardOrderSampler(SIZES, num_replicas=4, shuffle=False), 4)
    assert [len(r) for r in four] == [9, 9, 9, 9]
    counts = Counter(i for r in four for i in r)
    assert set(counts) == set(range(33)) and sum(c - 1 for c in counts.values()) == 3


def _dm(root: Path, **kwargs) -> ImageFolderDataModule:
    defaults = dict(
        root=str(root),
        num_classes=3,
        image_size=32,
        batch_size=4,
        num_workers=0,
        augment=TrainAugment(randaugment_layers=0),
    )
    return ImageFolderDataModule(**{**defaults, **kwargs})


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_datamodule_reads_shards_like_the_folder_they_came_from(shards, decode):
    folder, out = shards
    from_shards = _dm(out, train_dir="train-*.tar", val_dir="val-*.tar", decode=decode)
    from_folder = _dm(folder, decode=decode)
    for dm in (from_shards, from_folder):
        dm.prepare_data()
        dm.setup("fit")
    assert from_shards.class_names == CLASSES and len(from_shards.train_set) == 15
    assert isinstance(from_shards.train_dataloader().sampler, ShardOrderSampler)
    for shard_batch, folder_batch in zip(from_shards.val_dataloader(), from_folder.val_dataloader()):
        shard_images, shard_labels = from_shards.on_after_batch_transfer(shard_batch, 0)
        folder_images, folder_labels = from_folder.on_after_batch_transfer(folder_batch, 0)
        assert torch.equal(shard_labels, folder_labels) and torch.equal(shard_images, folder_images)
    images, labels = from_shards.on_after_batch_transfer(next(iter(from_shards.train_dataloader())), 0)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.shape == (4,)


def test_loader_workers_read_every_training_sample(shards):
    _, out = shards
    dm = _dm(out, train_dir="train-*.tar", val_dir="val-*.tar", batch_size=3, num_workers=2, persistent_workers=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    labels = torch.cat([batch[1] for batch in loader])
    assert sorted(labels.tolist()) == sorted(dm.train_set.source.labels.tolist())


def test_datamodule_configuration_errors_name_the_fix(shards):
    _, out = shards
    with pytest.raises(ValueError, match="val_holdout_per_class needs class folders"):
        _dm(out, train_dir="train-*.tar", val_holdout_per_class=1)
    with pytest.raises(DatasetError, match="val_dir must be one too"):
        _dm(out, train_dir="train-*.tar", val_dir="val").setup("fit")
    with pytest.raises(DatasetError, match=r"label 2, outside 0\.\.1; set num_classes"):
        _dm(out, num_classes=2, train_dir="train-*.tar", val_dir="val-*.tar").setup("fit")
    (out / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="lists 2 classes but num_classes=3"):
        _dm(out, train_dir="train-*.tar", val_dir="val-*.tar").setup("fit")


def test_writer_refuses_to_mix_with_existing_shards(shards, capsys):
    folder, out = shards
    with pytest.raises(SystemExit):
        shard_writer_main([str(folder / "train"), str(out), "--prefix", "train"])
    assert "train-000000.tar already exists" in capsys.readouterr().err
