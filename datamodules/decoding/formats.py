"""Which image files the project reads: one extension set for class folders, tar shards (reader and writer)
and predict, so a file one path accepts is never ignored by another."""

from __future__ import annotations

# every format the decoder reads (torchcodec, else Pillow/OpenCV); AVIF through Pillow's or torchcodec's libavif
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
IMAGE_SUFFIXES = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)  # tar-shard member suffixes (no dot)


def listed_extensions() -> str:
    """The accepted extensions for messages: "avif, bmp, gif, ..."."""
    return ", ".join(sorted(IMAGE_SUFFIXES))
