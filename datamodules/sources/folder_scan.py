"""Scanning ``<split>/<class>/<image>`` folders into compact file lists."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from datamodules.decoding.formats import IMAGE_EXTENSIONS, listed_extensions
from datamodules.errors import DatasetError

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
        """The file's bytes as a 1-D uint8 array (one ``readv`` into it: a third of ``np.fromfile``'s time)."""
        fd = os.open(self.path(index), os.O_RDONLY)
        try:
            data = np.empty(os.fstat(fd).st_size, dtype=np.uint8)
            got = os.readv(fd, [data])
        finally:
            os.close(fd)
        if got != len(data):
            raise OSError(f"short read: {got} of {len(data)} bytes (was the file changed while training?)")
        return data

    def subset(self, indices: np.ndarray) -> FileList:
        return FileList(self.root, self.relpaths[indices], self.labels[indices])


def layout_hint(root: Path, split: str) -> str:
    return f"expected layout {root}/{split}/<class_name>/<image>.jpg ({listed_extensions()})"


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


class SkippedFiles:
    """Image files a scan leaves out, counted per reason and reported in one warning per split."""

    REASONS: ClassVar[dict[str, str]] = {
        "outside": "image links that point outside {root} are skipped (only links within the dataset root are "
        "followed, so a scan never reads files elsewhere); copy the files in, or set root to the folder that "
        "holds them",
        "broken": "image links whose target is missing are skipped; fix or delete them",
        "nested": "images in sub-folders of class folders are skipped (a class is <split>/<class>/<image>, one level); "
        "move them up into their class folder",
        "special": "image names that are not regular files (FIFOs, sockets, devices) are skipped; "
        "replace them with files",
        "extension": "files are skipped for their extension ({extensions}): only {readable} are read; convert them "
        "(e.g. to PNG) or move them out of the class folders",
    }

    def __init__(self, root: str) -> None:
        self.root = root
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.extensions: Counter[str] = Counter()

    def add(self, reason: str, path: str, count: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        self.examples.setdefault(reason, path)

    def add_unread_extension(self, path: str) -> None:
        self.extensions[os.path.splitext(path)[1].lower() or "no extension"] += 1
        self.add("extension", path)

    def warn(self, split_dir: Path) -> None:
        extensions = ", ".join(f"{ext}: {n}" for ext, n in self.extensions.most_common())
        for reason, count in self.counts.items():
            what = self.REASONS[reason].format(root=self.root, extensions=extensions, readable=listed_extensions())
            warnings.warn(f"{split_dir}: {count} {what} (e.g. {self.examples[reason]}).", stacklevel=3)
        self.counts.clear()
        self.extensions.clear()


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _nested_images(folder: str) -> tuple[int, str]:
    """(number of image files anywhere below ``folder``, the first one); links to folders are not followed."""
    count, first = 0, ""
    for parent, _, names in os.walk(folder):
        images = sorted(name for name in names if is_image_name(name))
        count += len(images)
        first = first or (os.path.join(parent, images[0]) if images else "")
    return count, first


def class_images(class_dir: Path, skipped: SkippedFiles) -> list[str]:
    """Sorted image file names directly in ``class_dir`` whose real path lies within ``skipped.root``."""
    root = skipped.root
    inside = _is_within(os.path.realpath(class_dir), root)  # a linked class folder may lie elsewhere
    files = []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):  # sorted: reproducible order and examples
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            count, first = _nested_images(entry.path)
            if count:
                skipped.add("nested", first, count)
        elif is_image_name(entry.name):
            if not os.path.exists(entry.path):
                skipped.add("broken", entry.path)
            elif not entry.is_file():
                skipped.add("special", entry.path)
            elif not inside or (entry.is_symlink() and not _is_within(os.path.realpath(entry.path), root)):
                skipped.add("outside", f"{entry.path} -> {os.path.realpath(entry.path)}")
            else:
                files.append(entry.name)
        else:
            skipped.add_unread_extension(entry.path)
    return files


def scan_split(split_dir: Path, classes: list[str]) -> FileList:
    """All image files of ``classes`` under ``split_dir``, sorted by name within each class.

    The dataset root is ``split_dir``'s parent: files (or linked class folders) whose real path lies outside
    it are skipped, as are images in sub-folders of a class folder; each kind is reported in one warning.
    """
    skipped = SkippedFiles(os.path.realpath(split_dir.parent))
    relpaths: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        files = class_images(class_dir, skipped)
        if not files:
            skipped.warn(split_dir)
            raise DatasetError(
                f"class folder {class_dir} contains no images ({listed_extensions()}); add images or remove the folder."
            )
        relpaths.extend(f"{name}/{f}".encode() for f in files)
        labels.extend([label] * len(files))
    skipped.warn(split_dir)
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
