"""Scanning ``<split>/<class>/<image>`` folders into compact file lists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_LISTED = 5


@dataclass(frozen=True)
class FileList:
    """Image paths relative to ``root`` plus labels.

    Paths are a fixed-width bytes array, not Python strings, so forked loader
    workers share them without copy-on-access (matters at ImageNet scale).
    """

    root: str
    relpaths: np.ndarray  # dtype "S"
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.relpaths[index].decode())

    def name(self, index: int) -> str:
        return self.path(index)

    def read(self, index: int) -> np.ndarray:
        """The file's bytes as a 1-D uint8 array."""
        return np.fromfile(self.path(index), dtype=np.uint8)

    def subset(self, indices: np.ndarray) -> "FileList":
        return FileList(self.root, self.relpaths[indices], self.labels[indices])


def layout_hint(root: Path, split: str) -> str:
    return f"expected layout {root}/{split}/<class_name>/<image>.jpg (jpg, jpeg, png, webp, bmp, gif, tif)"


def list_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names; their order defines the label ids."""
    if not split_dir.is_dir():
        raise DatasetError(f"image folder {split_dir} not found; {layout_hint(split_dir.parent, split_dir.name)}.")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders; {layout_hint(split_dir.parent, split_dir.name)}.")
    return classes


def _brief(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def check_same_classes(reference: list[str], other: list[str], reference_dir: Path, other_dir: Path) -> None:
    """Labels are folder positions, so the class lists must match exactly."""
    if reference == other:
        return
    only_ref = sorted(set(reference) - set(other))
    only_other = sorted(set(other) - set(reference))
    raise DatasetError(
        f"class folders differ between {reference_dir} and {other_dir}: "
        f"only in {reference_dir.name}: [{_brief(only_ref)}]; only in {other_dir.name}: [{_brief(only_other)}]. "
        "Both splits need the same class folders."
    )


def scan_split(split_dir: Path, classes: list[str]) -> FileList:
    """All image files of ``classes`` under ``split_dir``, sorted by name within each class."""
    relpaths: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        files = sorted(
            e.name
            for e in os.scandir(class_dir)
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DatasetError(
                f"class folder {class_dir} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder."
            )
        relpaths.extend(f"{name}/{f}".encode() for f in files)
        labels.extend([label] * len(files))
    return FileList(str(split_dir), np.array(relpaths, dtype=bytes), np.array(labels, dtype=np.int64))


def hold_out(files: FileList, per_class: int, class_names: list[str]) -> tuple[FileList, FileList]:
    """Split off the last ``per_class`` files (sorted order) of every class as validation."""
    keep: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for label, name in enumerate(class_names):
        idx = np.flatnonzero(files.labels == label)
        if len(idx) <= per_class:
            raise DatasetError(
                f"class {name!r} has {len(idx)} images, cannot hold out {per_class} for validation; "
                "lower val_holdout_per_class."
            )
        keep.append(idx[:-per_class])
        held.append(idx[-per_class:])
    return files.subset(np.concatenate(keep)), files.subset(np.concatenate(held))
