"""Locating, fetching and decoding the official CIFAR python-pickle releases."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datamodules.errors import DatasetError
from datamodules.sources.download import download, file_md5, safe_extract

Variant = Literal["cifar10", "cifar100"]


@dataclass(frozen=True)
class CifarRelease:
    """Where one official release keeps its files and labels."""

    title: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


RELEASES: dict[str, CifarRelease] = {
    "cifar10": CifarRelease(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
    ),
    "cifar100": CifarRelease(
        title="CIFAR-100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
    ),
}

# The only globals a CIFAR pickle needs: numpy array reconstruction (numpy 1 and 2 module
# names) and _codecs.encode, which protocol-2 pickles written by Python 3 use for bytes.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild dicts, lists and numpy arrays but cannot call arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[bytes, Any]:
    """Load one CIFAR batch file (Python 2 pickles, hence bytes keys)."""
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(
            f"{path} is not a valid CIFAR pickle ({exc}); delete the folder and download again."
        ) from None


def missing_files(root: Path, release: CifarRelease) -> list[Path]:
    folder = root / release.folder
    return [folder / name for name in release.files if not (folder / name).is_file()]


def ensure_release(root: Path, release: CifarRelease, allow_download: bool, url: str | None, md5: str | None) -> Path:
    """Make sure ``root/<folder>`` holds every file: extract a local archive or download one if allowed."""
    missing = missing_files(root, release)
    if not missing:
        return root / release.folder
    url = url or release.url
    md5 = md5 or (release.md5 if url == release.url else None)
    archive = root / url.rsplit("/", 1)[-1]
    if not archive.is_file():
        if not allow_download:
            raise DatasetError(
                f"{release.title} not found: missing {missing[0]}"
                + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                + f". Expected the official python version: {root / release.folder}/{{{','.join(release.files)}}}. "
                f"Set download=True to fetch {url}, or put {release.archive} into {root}."
            )
        download(url, archive, md5)
    elif md5 is not None and file_md5(archive) != md5:
        raise DatasetError(f"checksum mismatch for {archive}: expected md5 {md5}. Delete it and download again.")
    safe_extract(archive, root, release.folder)
    still_missing = missing_files(root, release)
    if still_missing:
        raise DatasetError(
            f"{archive} did not contain {still_missing[0]}; it is not the official {release.title} python release."
        )
    return root / release.folder


def check_batch_labels(path: Path, labels: np.ndarray, num_images: int, num_classes: int) -> None:
    """One label per image, each a class id: a bad label would otherwise surface as a CUDA assert or a silent
    misalignment far from the file that holds it."""
    if len(labels) != num_images:
        raise DatasetError(
            f"{path} holds {num_images} images but {len(labels)} labels; delete the folder and download again."
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DatasetError(
            f"{path}: image {int(bad[0])} has label {int(labels[bad[0]])}, outside 0..{num_classes - 1}"
            + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")
            + "; the file is damaged or from another dataset. Delete the folder and download again."
        )


def load_batches(folder: Path, names: tuple[str, ...], release: CifarRelease) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batch files into uint8 images [N,3,32,32] and int64 labels [N]."""
    images, labels = [], []
    for name in names:
        entry = read_pickle(folder / name)
        try:
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            label = np.asarray(entry[release.label_key], dtype=np.int64).reshape(-1)
        except (KeyError, ValueError) as exc:
            raise DatasetError(
                f"{folder / name} lacks CIFAR fields ({exc}); delete the folder and download again."
            ) from None
        check_batch_labels(folder / name, label, len(data), release.num_classes)
        images.append(data)
        labels.append(label)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_class_names(folder: Path, release: CifarRelease) -> list[str]:
    meta = read_pickle(folder / release.meta_file)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[release.names_key]]


def holdout_indices(
    labels: torch.Tensor, per_class: int, num_classes: int, class_names: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, holdout); holdout = the last ``per_class`` images of each class in file order.

    ``class_names``, when known, name the class in the error: a label number alone means little to a user.
    """
    train_parts, holdout_parts = [], []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) <= per_class:
            name = f" ({class_names[c]})" if class_names is not None else ""
            raise DatasetError(
                f"class {c}{name} has {len(idx)} training images, cannot hold out {per_class}; lower holdout_per_class."
            )
        train_parts.append(idx[: len(idx) - per_class])
        holdout_parts.append(idx[len(idx) - per_class :])
    return torch.cat(train_parts).sort().values, torch.cat(holdout_parts).sort().values
