"""Datasets over encoded images (files or tar-shard members), tolerant of corrupt ones, for the CPU and
device decode paths."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.decoding.decoders import DEFAULT_MAX_IMAGE_PIXELS, decode_rgb
from datamodules.errors import DatasetError, ImageDecodeError, decode_failure

OnCorrupt = Literal["skip", "error"]
MAX_CONSECUTIVE_FAILURES = 16
# a file that cannot be read (OSError) or decoded (every decoder failure and the pixel limit, see ``decoders``)
DECODE_ERRORS = (OSError, ImageDecodeError)


def decode_bytes(data: np.ndarray, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an encoded image (1-D uint8 array) to HWC uint8 RGB, upright (see ``decoders``); raises
    ``ImageDecodeError`` on corrupt or truncated data and on images over ``max_pixels``."""
    return np.ascontiguousarray(decode_rgb(data, max_pixels).permute(1, 2, 0).numpy())


def bytes_tensor(data: np.ndarray) -> torch.Tensor:
    """Encoded bytes as a 1-D uint8 tensor (decoded later, on the device)."""
    return torch.from_numpy(data)


class EncodedSource(Protocol):
    """Where encoded images come from: an image folder (``FileList``) or tar shards (``TarShards``)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def name(self, index: int) -> str:
        """A path-like name for messages (and the device-decode path's batch record)."""
        ...

    def read(self, index: int) -> np.ndarray:
        """The encoded image as a 1-D uint8 array; raises OSError when it cannot be read."""
        ...


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
        reason = decode_failure(exc)
        if self.on_corrupt == "error":
            raise DatasetError(
                f"cannot decode image {path} ({reason}). Replace or delete it, or set on_corrupt='skip'."
            ) from None
        with self._count.get_lock():
            self._count.value += 1
        warnings.warn(
            f"skipping unreadable image {path} ({reason}); a neighbouring sample is used instead.", stacklevel=2
        )


class EncodedImageDataset(Dataset):
    """Returns (``decode(source.read(i))`` through ``transform``, label); unreadable images are replaced by the
    next index."""

    def __init__(
        self,
        source: EncodedSource,
        decode: Callable[[np.ndarray], Any],
        transform: Callable[[Any], Any] | None,
        corrupt: CorruptFiles,
        with_path: bool = False,
    ) -> None:
        self.source, self.decode, self.transform, self.corrupt, self.with_path = (
            source,
            decode,
            transform,
            corrupt,
            with_path,
        )

    def __len__(self) -> int:
        return len(self.source)

    def first_readable(self, index: int, decode: Callable[[np.ndarray], Any]) -> tuple[Any, int]:
        """``decode`` of image ``index``'s bytes, and ``index``; an unreadable image is reported (``corrupt``) and
        the next one taken in its place."""
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            i = (index + attempt) % len(self.source)
            try:
                return decode(self.source.read(i)), i
            except DECODE_ERRORS as exc:
                self.corrupt.report(self.source.name(i), exc)
        raise DatasetError(
            f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images from {self.source.name(index)} on; "
            "the dataset looks damaged, check the files."
        )

    def __getitem__(self, index: int) -> tuple:
        sample, i = self.first_readable(index, self.decode)
        if self.transform is not None:
            sample = self.transform(sample)
        label = torch.tensor(self.source.labels[i], dtype=torch.int64)
        return (sample, label, self.source.name(i)) if self.with_path else (sample, label)

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
