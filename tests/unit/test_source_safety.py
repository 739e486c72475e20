"""Data sources refuse what they cannot use instead of dropping it quietly: one extension set for folders and
shards, writes and extractions confined to their folder, stale shard indexes noticed; slow jobs show progress."""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from data_helpers import (
    make_tar_gz,
    random_image,
    serve_directory,
    write_fake_cifar,
    write_image_folder,
)
from PIL import Image, features

import datamodules.sources.tar_shards as tar_shards
from datamodules import CIFARDataModule, DatasetError
from datamodules.decoding.encoded_images import decode_bytes
from datamodules.decoding.formats import IMAGE_EXTENSIONS, IMAGE_SUFFIXES
from datamodules.sources.cifar_release import file_md5
from datamodules.sources.folder_scan import FileList, list_classes, scan_split
from datamodules.sources.shard_writer import main as shard_writer_main
from datamodules.sources.shard_writer import write_shard, write_shards
from datamodules.sources.tar_shards import TarShards, load_indexes


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shards_of_bmp_gif_and_tiff_images_are_read_back_whole(tmp_path):
    """The writer packed them and the reader ignored them: a 2-class model trained on one class."""
    image = random_image(12, 12, 0)
    for name, fmt in (("a/0.png", "PNG"), ("b/0.bmp", "BMP"), ("b/1.gif", "GIF"), ("b/2.tiff", "TIFF")):
        (tmp_path / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "train" / name, fmt)
    write_shards(tmp_path / "train", tmp_path / "shards", "train", samples_per_shard=10)
    shards = TarShards.open(tmp_path / "shards", "train-*.tar")
    assert sorted(shards.labels.tolist()) == [0, 1, 1, 1]
    assert all(decode_bytes(shards.read(i)).shape == (12, 12, 3) for i in range(len(shards)))
    assert {f".{suffix}" for suffix in IMAGE_SUFFIXES} == IMAGE_EXTENSIONS  # the reader's set is the folders' set


def test_a_label_without_an_image_the_reader_reads_is_an_error(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("k1.jpg", b"x"), ("k1.cls", b"0"), ("k2.heic", b"x"), ("k2.cls", b"1")])
    with pytest.raises(DatasetError, match=r"s\.tar: sample 'k2' \(and 0 more\) has a \.cls but no image member"):
        tar_shards.scan_shard(shard)


def test_the_writer_refuses_a_format_the_reader_does_not_read(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.heic").write_bytes(b"x")
    files = FileList(str(tmp_path), np.array([b"a/x.heic"]), np.array([0]))
    with pytest.raises(DatasetError, match=r"a/x\.heic: \.heic images are not read from shards"):
        write_shard(tmp_path / "out.tar", files, np.array([0]), 0)
    assert not list(tmp_path.glob("out.tar*"))


@pytest.mark.parametrize("prefix", ["../x", "sub/x", "/tmp/x", "..", "*"])
def test_a_prefix_that_would_write_outside_the_output_folder_is_refused(tmp_path, capsys, prefix):
    root = write_image_folder(tmp_path / "data", "train", ["a"], per_class=1)
    out = tmp_path / "deep" / "out"
    with pytest.raises(SystemExit) as exit_info:
        shard_writer_main([str(root / "train"), str(out), "--prefix", prefix])
    assert exit_info.value.code == 2
    assert f"--prefix {prefix!r} is not a plain name" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tar*"))


def test_a_shard_rewritten_with_the_same_size_and_mtime_is_indexed_again(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("k.png", b"x"), ("k.cls", b"0")])
    stat = shard.stat()
    assert load_indexes([shard])[0].labels.tolist() == [0]
    _tar(shard, [("k.png", b"x"), ("k.cls", b"1")])  # same size
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert shard.stat().st_size == stat.st_size and shard.stat().st_mtime_ns == stat.st_mtime_ns
    assert load_indexes([shard])[0].labels.tolist() == [1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch) -> _Terminal:
    """stderr as an interactive terminal outside CI, where progress bars are shown (set in the test body: pytest's
    capture replaces sys.stderr between a fixture's setup and the test)."""
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("CI", raising=False)
    return stream


def test_shard_writing_and_indexing_show_progress_per_shard(tmp_path, monkeypatch):
    terminal = _terminal(monkeypatch)
    root = write_image_folder(tmp_path / "data", "train", ["a", "b"], per_class=3)
    write_shards(root / "train", tmp_path / "shards", "train", samples_per_shard=2)
    assert "writing train shards" in terminal.getvalue() and "3/3" in terminal.getvalue()
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    load_indexes(shards, tmp_path / "idx", progress=True)
    assert "indexing shards" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    load_indexes(shards, tmp_path / "idx2", progress=False)  # other ranks
    assert terminal.getvalue() == ""


def test_progress_bars_stay_off_under_ci(tmp_path, monkeypatch):
    terminal = _terminal(monkeypatch)
    root = write_image_folder(tmp_path / "data", "train", ["a"], per_class=2)
    monkeypatch.setenv("CI", "true")
    write_shards(root / "train", tmp_path / "shards", "train", samples_per_shard=1)
    assert terminal.getvalue() == ""


def _release(tmp_path: Path, extra: dict[str, bytes]) -> tuple[Path, str]:
    source = tmp_path / "src"
    write_fake_cifar(source, "cifar10", train_per_class=1, test_per_class=1)
    served = tmp_path / "served"
    served.mkdir()
    archive = make_tar_gz(source / "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    if extra:
        with tarfile.open(archive, "r:gz") as tar:
            members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
        with tarfile.open(archive, "w:gz") as tar:
            for member, data in members:
                tar.addfile(member, io.BytesIO(data) if data is not None else None)
            for name, data in extra.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return served, file_md5(archive)


def test_the_download_shows_progress_sized_from_content_length(tmp_path, monkeypatch):
    terminal = _terminal(monkeypatch)
    served, md5 = _release(tmp_path, {})
    size = (served / "cifar-10-python.tar.gz").stat().st_size
    with serve_directory(served) as base:
        url = f"{base}/cifar-10-python.tar.gz"
        dm = CIFARDataModule(root=str(tmp_path / "data"), download=True, download_url=url, download_md5=md5)
        dm.prepare_data()
    shown = terminal.getvalue()
    assert "downloading cifar-10-python.tar.gz" in shown and "100%" in shown
    assert f"{size / 1024:.2f}k" in shown or f"{size / 1024:.1f}k" in shown  # the total came from Content-Length


def test_extraction_refuses_entries_outside_the_dataset_folder_and_keeps_user_folders(tmp_path):
    """A custom archive's top-level 'results/' replaced the user's own results/ folder (rmtree), silently."""
    served, md5 = _release(tmp_path, {"results/readme.txt": b"from the archive"})
    root = tmp_path / "data"
    (root / "results").mkdir(parents=True)
    (root / "results" / "mine.txt").write_text("keep me")
    shutil.copy(served / "cifar-10-python.tar.gz", root)
    dm = CIFARDataModule(root=str(root), download_url="http://127.0.0.1:9/cifar-10-python.tar.gz", download_md5=md5)
    refused = r"holds 'results/readme\.txt', outside cifar-10-batches-py/; .*nothing was extracted"
    with pytest.raises(DatasetError, match=refused):
        dm.prepare_data()
    assert (root / "results" / "mine.txt").read_text() == "keep me"
    assert not (root / "cifar-10-batches-py").exists()


def test_extraction_replaces_an_incomplete_copy_of_the_dataset_folder(tmp_path):
    served, md5 = _release(tmp_path, {})
    root = tmp_path / "data"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
    shutil.copy(served / "cifar-10-python.tar.gz", root)
    dm = CIFARDataModule(root=str(root), download_url="http://127.0.0.1:9/cifar-10-python.tar.gz", download_md5=md5)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 10


@pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")
def test_avif_class_images_are_read_and_skipped_extensions_are_counted_in_one_warning(tmp_path):
    """AVIF and HEIC files in class folders were ignored without a word, though the decoder reads AVIF."""
    root = write_image_folder(tmp_path, "train", ["a"], per_class=1)
    Image.fromarray(random_image(16, 16, 0)).save(root / "train" / "a" / "photo.avif", "AVIF")
    for name in ("x.heic", "y.heic", "notes.txt"):
        (root / "train" / "a" / name).write_bytes(b"x")
    os.mkfifo(root / "train" / "a" / "pipe.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = scan_split(root / "train", list_classes(root / "train"))
    assert sorted(Path(files.path(i)).name for i in range(len(files))) == ["0000.jpg", "photo.avif"]
    assert decode_bytes(files.read(1)).shape == (16, 16, 3)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert any("3 files are skipped for their extension (.heic: 2, .txt: 1)" in m for m in messages)
    assert any("1 image names that are not regular files" in m and "pipe.png" in m for m in messages)
