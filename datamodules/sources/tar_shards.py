"""Tar shards of images (the WebDataset layout), read by random access through a per-shard index.

A shard is a plain tar file whose members form samples by key, the member name up to the first
dot of its base name: ``<key>.jpg`` (or any extension of ``decoding.formats``: .png, .webp, ...) holds the
image and ``<key>.cls`` the class id as decimal text. Other members (``.json``, ...) are ignored, but a
label whose sample has no image is an error: its image is in a format not read, or missing. Hugging Face's
``timm/imagenet-1k-wds`` has this layout, as do the shards ``python -m datamodules.sources.shard_writer`` writes.

Each shard is scanned once for the byte offset and size of its images, and the result is cached
as ``<shard>.idx.npz`` beside it (stamped with the shard's size, mtime and a hash of its first and last
64 KiB, so a rewritten shard is scanned again), in the user's cache when that folder is read-only, or in
``index_dir``; reading a sample is then one ``os.preadv``.
A dataset becomes a few hundred large files instead of a million small ones, which network file
systems and object-store mounts serve far better, and a downloaded WebDataset copy is used as is.
"""

from __future__ import annotations

import glob
import hashlib
import multiprocessing
import os
import tarfile
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.decoding.formats import IMAGE_SUFFIXES, listed_extensions
from datamodules.errors import DatasetError
from datamodules.sources.progress import progress_bar

LABEL_SUFFIX = "cls"
CLASS_NAMES_FILE = "classes.txt"
INDEX_SUFFIX = ".idx.npz"
INDEX_VERSION = 2  # 2: the stamp holds a content hash
STAMP_HASH_BYTES = 64 << 10  # hashed from each end of a shard
MAX_OPEN_SHARDS = 64  # file descriptors per process; ImageNet has 1,024 training shards


def is_shard_pattern(spec: str) -> bool:
    """A split given as ``*.tar`` (a glob or one file) is read from tar shards, anything else is a folder."""
    return spec.endswith(".tar")


def resolve_shards(root: Path, pattern: str) -> list[Path]:
    """The shard files matching ``pattern`` (relative to ``root`` unless absolute), sorted by name."""
    full = pattern if os.path.isabs(pattern) else str(root / pattern)
    paths = sorted(Path(p) for p in glob.glob(full))
    if not paths:
        raise DatasetError(
            f"no tar shards match {full}; check root and the split pattern (e.g. 'imagenet1k-train-*.tar'), "
            "or write shards with `python -m datamodules.sources.shard_writer`."
        )
    return paths


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset naming: (key, suffix), split at the first dot of the base name."""
    directory, base = os.path.split(name)
    stem, _, suffix = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), suffix.lower()


@dataclass(frozen=True)
class ShardIndex:
    """Where each image of one shard lies: byte offsets, sizes, labels and keys, in tar order."""

    offsets: np.ndarray  # int64
    sizes: np.ndarray  # int64
    labels: np.ndarray  # int64
    keys: np.ndarray  # dtype "S"

    def __len__(self) -> int:
        return len(self.labels)


def _parse_label(raw: bytes, shard: Path, key: str) -> int:
    try:
        return int(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise DatasetError(
            f"{shard}: {key}.{LABEL_SUFFIX} holds {raw[:20]!r}, not a class id; each label member holds one integer."
        ) from None


def _refuse_duplicate(seen: dict, shard: Path, key: str, kind: str, member: str) -> None:
    """A sample is all members of one key, so a second image or label under a key would silently replace the
    first (or pair an image with another sample's label)."""
    if key in seen:
        raise DatasetError(
            f"{shard}: sample {key!r} has a second {kind} member ({member}); each key needs exactly one image and one "
            f".{LABEL_SUFFIX}. Rename or remove the duplicate and write the shard again."
        )


def scan_shard(shard: Path) -> ShardIndex:
    """Read the tar headers (and the small label members) of one shard."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, suffix = split_member_name(member.name)
                if suffix in IMAGE_SUFFIXES:
                    _refuse_duplicate(images, shard, key, "image", member.name)
                    images[key] = (member.offset_data, member.size)
                elif suffix == LABEL_SUFFIX:
                    _refuse_duplicate(labels, shard, key, "label", member.name)
                    labels[key] = _parse_label(tar.extractfile(member).read(), shard, key)
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{shard} is not a readable tar file ({exc}); download or write it again.") from None
    if not images:
        raise DatasetError(f"{shard} holds no images ({listed_extensions()}); is it an image shard?")
    imageless = [key for key in labels if key not in images]
    if imageless:
        raise DatasetError(
            f"{shard}: sample {imageless[0]!r} (and {len(imageless) - 1} more) has a .{LABEL_SUFFIX} but no image "
            f"member read here ({listed_extensions()}); convert its image to one of them, or drop the sample, and "
            "write the shard again."
        )
    unlabelled = [key for key in images if key not in labels]
    if unlabelled:
        raise DatasetError(
            f"{shard}: sample {unlabelled[0]!r} (and {len(unlabelled) - 1} more) has no .{LABEL_SUFFIX} member; "
            f"every image needs <key>.{LABEL_SUFFIX} with its class id."
        )
    keys = list(images)
    return ShardIndex(
        offsets=np.array([images[k][0] for k in keys], dtype=np.int64),
        sizes=np.array([images[k][1] for k in keys], dtype=np.int64),
        labels=np.array([labels[k] for k in keys], dtype=np.int64),
        keys=np.array([k.encode() for k in keys], dtype=bytes),
    )


def fallback_index_dir(shard_dir: Path) -> Path:
    """Where indexes of a read-only shard folder go: a per-folder directory of the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "coatnet" / "shard_index" / hashlib.sha1(str(shard_dir.resolve()).encode()).hexdigest()[:16]


def index_dirs(shard: Path, index_dir: Path | None) -> list[Path]:
    """Where an index may be cached, in order: ``index_dir`` if set, else beside the shard, then the user cache."""
    return [index_dir] if index_dir is not None else [shard.parent, fallback_index_dir(shard.parent)]


def _content_hash(shard: Path, size: int) -> int:
    """A hash of the first and last ``STAMP_HASH_BYTES``: a shard rewritten within the same second and size
    (same stat) still gets a new stamp, while reading it costs two small reads, not the whole shard."""
    digest = hashlib.blake2b(digest_size=8)
    with open(shard, "rb") as f:
        digest.update(f.read(STAMP_HASH_BYTES))
        f.seek(max(0, size - STAMP_HASH_BYTES))
        digest.update(f.read(STAMP_HASH_BYTES))
    return int(np.frombuffer(digest.digest(), dtype=np.int64)[0])


def _stamp(shard: Path) -> np.ndarray:
    stat = shard.stat()
    return np.array([INDEX_VERSION, stat.st_size, stat.st_mtime_ns, _content_hash(shard, stat.st_size)], dtype=np.int64)


def load_cached_index(shard: Path, index_dir: Path | None) -> ShardIndex | None:
    """The first cached index that is current, or None when each is missing, unreadable or older than the shard."""
    for folder in index_dirs(shard, index_dir):
        try:
            with np.load(folder / (shard.name + INDEX_SUFFIX)) as cached:
                if np.array_equal(cached["stamp"], _stamp(shard)):
                    return ShardIndex(cached["offsets"], cached["sizes"], cached["labels"], cached["keys"])
        except (OSError, KeyError, ValueError):
            continue
    return None


def write_index(path: Path, shard: Path, index: ShardIndex) -> None:
    """Write atomically, so a reader never sees half an index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(
        partial, stamp=_stamp(shard), offsets=index.offsets, sizes=index.sizes, labels=index.labels, keys=index.keys
    )
    os.replace(partial, path)


def save_index(shard: Path, index: ShardIndex, index_dir: Path | None) -> None:
    """Cache in the first of ``index_dirs`` that takes it; OSError when none does."""
    failures = []
    for folder in index_dirs(shard, index_dir):
        try:
            return write_index(folder / (shard.name + INDEX_SUFFIX), shard, index)
        except OSError as exc:
            failures.append(f"{folder} ({exc.strerror or exc})")
    raise OSError(" and ".join(failures))


def load_indexes(
    shards: list[Path], index_dir: Path | None = None, workers: int = 1, progress: bool = False
) -> list[ShardIndex]:
    """Every shard's index: cached ones are loaded, the rest scanned (``workers`` processes) and cached.

    Scanning reads every tar header: about 5 s per 100,000 members per process on a 2-core CPU here, so
    ``progress`` shows a bar per shard scanned (the caller enables it on one rank only).
    """
    indexes = [load_cached_index(shard, index_dir) for shard in shards]
    stale = [i for i, index in enumerate(indexes) if index is None]
    scanned: list[ShardIndex] = []
    with progress_bar(len(stale), "indexing shards", unit="shard", enabled=progress and bool(stale)) as bar:
        if len(stale) > 1 and workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            # parsing headers is Python-bound, so processes, and forked ones as DataLoader workers are:
            # spawn would need every caller's script to guard its main module
            with ProcessPoolExecutor(min(workers, len(stale)), mp_context=multiprocessing.get_context("fork")) as pool:
                for index in pool.map(scan_shard, [shards[i] for i in stale]):
                    scanned.append(index)
                    bar.update()
        else:
            for i in stale:
                scanned.append(scan_shard(shards[i]))
                bar.update()
    unsaved: list[str] = []
    for i, index in zip(stale, scanned):
        indexes[i] = index
        try:
            save_index(shards[i], index, index_dir)
        except OSError as exc:
            unsaved.append(str(exc))
    if unsaved:
        warnings.warn(
            f"cannot cache shard indexes in {unsaved[0]}; every run scans the shards again. "
            "Set shard_index_dir to a writable folder.",
            stacklevel=2,
        )
    return indexes  # type: ignore[return-value]


def read_class_names(folder: Path, num_classes: int) -> list[str] | None:
    """Class names from ``folder/classes.txt`` (one per line, in label order), if present."""
    path = folder / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise DatasetError(f"{path} lists {len(names)} classes but num_classes={num_classes}; fix one of them.")
    return names


class TarShards:
    """The images of a list of shards as one indexable source (``EncodedSource``), shard after shard."""

    def __init__(self, shards: list[Path], indexes: list[ShardIndex]) -> None:
        self.shards = [str(shard) for shard in shards]
        self.shard_sizes = np.array([len(index) for index in indexes], dtype=np.int64)
        self.shard_of = np.repeat(np.arange(len(shards), dtype=np.int32), self.shard_sizes)
        self.offsets = np.concatenate([index.offsets for index in indexes])
        self.sizes = np.concatenate([index.sizes for index in indexes])
        self.labels = np.concatenate([index.labels for index in indexes])
        self.keys = np.concatenate([index.keys for index in indexes])
        self._open: OrderedDict[int, int] = OrderedDict()

    @classmethod
    def open(
        cls, root: Path, pattern: str, index_dir: Path | None = None, workers: int = 1, progress: bool = False
    ) -> TarShards:
        shards = resolve_shards(root, pattern)
        return cls(shards, load_indexes(shards, index_dir, workers, progress))

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        return f"{self.shards[self.shard_of[index]]}:{self.keys[index].decode()}"

    def _descriptor(self, shard: int) -> int:
        """Open shards stay open (at most MAX_OPEN_SHARDS, least recently used closed first)."""
        fd = self._open.pop(shard, None)
        if fd is None:
            if len(self._open) >= MAX_OPEN_SHARDS:
                os.close(self._open.popitem(last=False)[1])
            fd = os.open(self.shards[shard], os.O_RDONLY)
        self._open[shard] = fd
        return fd

    def read(self, index: int) -> np.ndarray:
        """One ``preadv`` at the member's offset; position-free, so forked workers may share descriptors."""
        data = np.empty(int(self.sizes[index]), dtype=np.uint8)
        got = os.preadv(self._descriptor(int(self.shard_of[index])), [data], int(self.offsets[index]))
        if got != len(data):
            raise OSError(f"shard truncated: {got} of {len(data)} bytes")
        return data

    def check_labels(self, num_classes: int) -> None:
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
        if len(bad):
            raise DatasetError(
                f"{self.name(int(bad[0]))} has label {int(self.labels[bad[0]])}, outside 0..{num_classes - 1}; "
                "set num_classes to the dataset's class count."
            )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # descriptors do not cross process boundaries (spawn)
        return state

    def __del__(self) -> None:
        for fd in getattr(self, "_open", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
