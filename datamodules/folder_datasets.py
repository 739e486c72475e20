"""Datasets over image files, tolerant of corrupt files, for the CPU and device decode paths."""

from __future__ import annotations

import multiprocessing
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.errors import DatasetError
from datamodules.folder_scan import FileList

OnCorrupt = Literal["skip", "error"]
MAX_CONSECUTIVE_FAILURES = 16
DECODE_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError)


def decode_file(path: str) -> np.ndarray:
    """Decode any PIL-readable image to HWC uint8 RGB; raises on corrupt or truncated files."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_bytes(path: str) -> torch.Tensor:
    """Raw file bytes as a 1-D uint8 tensor (decoded later, on the device)."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


class CorruptFiles:
    """Handles unreadable files per ``on_corrupt``; the count is shared with loader workers."""

    def __init__(self, on_corrupt: OnCorrupt) -> None:
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self._count = multiprocessing.Value("l", 0)

    @property
    def count(self) -> int:
        return int(self._count.value)

    def report(self, path: str, exc: BaseException) -> None:
        """Raise (mode "error") or warn and count (mode "skip")."""
        reason = f"{type(exc).__name__}: {exc}"
        if self.on_corrupt == "error":
            raise DatasetError(f"cannot decode image {path} ({reason}). Replace or delete it, or set on_corrupt='skip'.") from None
        with self._count.get_lock():
            self._count.value += 1
        warnings.warn(f"skipping unreadable image {path} ({reason}); a neighbouring sample is used instead.", stacklevel=2)


class FileDataset(Dataset):
    """Returns (``load(path)`` through ``transform``, label); unreadable files are replaced by the next index."""

    def __init__(
        self,
        files: FileList,
        load: Callable[[str], Any],
        transform: Callable[[Any], Any] | None,
        corrupt: CorruptFiles,
        with_path: bool = False,
    ) -> None:
        self.files, self.load, self.transform, self.corrupt, self.with_path = files, load, transform, corrupt, with_path

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple:
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            i = (index + attempt) % len(self.files)
            path = self.files.path(i)
            try:
                sample = self.load(path)
            except DECODE_ERRORS as exc:
                self.corrupt.report(path, exc)
                continue
            if self.transform is not None:
                sample = self.transform(sample)
            label = torch.tensor(self.files.labels[i], dtype=torch.int64)
            return (sample, label, path) if self.with_path else (sample, label)
        raise DatasetError(
            f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images from {self.files.path(index)} on; "
            "the dataset looks damaged, check the files."
        )

    def reseed(self, seed: int) -> None:
        reseed = getattr(self.transform, "reseed", None)
        if callable(reseed):
            reseed(seed)


@dataclass
class EncodedImages:
    """A batch of undecoded files: 1-D uint8 byte tensors (kept on the CPU) and their paths."""

    data: list[torch.Tensor]
    paths: list[str]
    train: bool

    def __len__(self) -> int:
        return len(self.data)


class EncodedCollate:
    """Collate for the device-decode path: keeps the variable-length byte tensors as a list."""

    def __init__(self, train: bool) -> None:
        self.train = train

    def __call__(self, samples: list[tuple[torch.Tensor, torch.Tensor, str]]) -> tuple[EncodedImages, torch.Tensor]:
        data, labels, paths = zip(*samples)
        return EncodedImages(list(data), list(paths), self.train), torch.stack(labels)
