"""Pack a class-folder split into tar shards that ``ImageFolderDataModule`` reads.

Point each split at its own prefix (``train_dir: "train-*.tar"``, ``val_dir: "val-*.tar"``): a bare
``*.tar`` would read the validation shards of the same folder into training too.

    python -m datamodules.sources.shard_writer data/imagenet/train data/imagenet-shards --prefix train
    python -m datamodules.sources.shard_writer data/imagenet/val data/imagenet-shards --prefix val --no-shuffle

Images are copied byte for byte (no re-encoding) in a seeded random order, so that every shard
mixes all classes: the loader shuffles only within a few shards at a time. Each shard is written
to a temporary name and renamed when complete, and ``classes.txt`` records the class names.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import tarfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from datamodules.decoding.formats import IMAGE_SUFFIXES, listed_extensions
from datamodules.errors import DatasetError
from datamodules.sources.folder_scan import FileList, list_classes, scan_split
from datamodules.sources.progress import progress_bar
from datamodules.sources.tar_shards import CLASS_NAMES_FILE, LABEL_SUFFIX

DEFAULT_SAMPLES_PER_SHARD = 1250  # ~140 MB of ImageNet JPEGs; 1,025 shards for the 1.28M training images
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a plain file-name start: no folders, no glob characters


def check_prefix(prefix: str) -> str:
    """Shards are written into the output folder only: a prefix holding a path (``../x``) would write elsewhere."""
    if not PREFIX_PATTERN.fullmatch(prefix) or ".." in prefix:
        raise DatasetError(
            f"--prefix {prefix!r} is not a plain name (letters, digits, '_', '-', '.'; no '/' or '..'): shards are "
            "written inside out_dir only; to write elsewhere, change out_dir."
        )
    return prefix


def member_suffix(source: str) -> str:
    """The tar member suffix of an image file; only formats the shard reader reads are packed."""
    suffix = os.path.splitext(source)[1].lower().lstrip(".")
    if suffix not in IMAGE_SUFFIXES:
        raise DatasetError(
            f"{source}: .{suffix} images are not read from shards ({listed_extensions()} are); convert it "
            "(e.g. to PNG) or remove it, then write the shards again."
        )
    return suffix


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, files: FileList, indices: np.ndarray, first_key: int) -> None:
    """One shard holding ``files[indices]`` as ``<key>.<ext>`` + ``<key>.cls``, written atomically."""
    sources = [files.path(int(i)) for i in indices]
    suffixes = [member_suffix(source) for source in sources]  # all refused before anything is written
    partial_path = path.with_name(path.name + ".partial")
    try:
        with tarfile.open(partial_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, (i, source, suffix) in enumerate(zip(indices, sources, suffixes)):
                key = f"{first_key + offset:08d}"
                _add_member(tar, f"{key}.{suffix}", Path(source).read_bytes())
                _add_member(tar, f"{key}.{LABEL_SUFFIX}", str(int(files.labels[i])).encode())
    except BaseException:
        partial_path.unlink(missing_ok=True)
        raise
    os.replace(partial_path, path)


def write_shards(
    split_dir: Path,
    out_dir: Path,
    prefix: str,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    shuffle: bool = True,
    seed: int = 0,
    workers: int = 1,
) -> list[Path]:
    """Write ``out_dir/<prefix>-000000.tar``, ... from ``split_dir/<class>/<image>``; returns the shard paths."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    check_prefix(prefix)
    existing = sorted(out_dir.glob(f"{prefix}-*.tar"))
    if existing:
        raise DatasetError(f"{existing[0]} already exists; remove the old shards or choose another --prefix.")
    classes = list_classes(split_dir)
    names_file = out_dir / CLASS_NAMES_FILE
    if names_file.is_file() and [n for n in names_file.read_text().splitlines() if n.strip()] != classes:
        raise DatasetError(f"{names_file} lists other classes than {split_dir}; write the splits to separate folders.")
    files = scan_split(split_dir, classes)
    order = np.random.default_rng(seed).permutation(len(files)) if shuffle else np.arange(len(files))
    starts = range(0, len(files), samples_per_shard)
    paths = [out_dir / f"{prefix}-{n:06d}.tar" for n in range(len(starts))]
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(path, order[start : start + samples_per_shard], start) for path, start in zip(paths, starts)]
    with progress_bar(len(jobs), f"writing {prefix} shards", unit="shard") as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
                for _ in pool.map(partial(_write_job, files), jobs):
                    bar.update()
        else:
            for job in jobs:
                _write_job(files, job)
                bar.update()
    names_file.write_text("".join(f"{name}\n" for name in classes))
    return paths


def _write_job(files: FileList, job: tuple[Path, np.ndarray, int]) -> None:
    write_shard(files=files, path=job[0], indices=job[1], first_key=job[2])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split_dir", type=Path, help="a split of class folders, e.g. data/imagenet/train")
    parser.add_argument("out_dir", type=Path, help="folder for the shards and classes.txt")
    parser.add_argument("--prefix", default="train", help="shard names: <prefix>-000000.tar, ...")
    parser.add_argument("--samples-per-shard", type=int, default=DEFAULT_SAMPLES_PER_SHARD)
    parser.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True, help="random sample order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="shards written in parallel")
    args = parser.parse_args(argv)
    try:
        paths = write_shards(
            args.split_dir, args.out_dir, args.prefix, args.samples_per_shard, args.shuffle, args.seed, args.workers
        )
    except (DatasetError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {len(paths)} shards to {args.out_dir}: {paths[0].name} .. {paths[-1].name}")


if __name__ == "__main__":
    main()
