"""The one pixel limit every decoder path enforces (``max_image_pixels``), in a module light enough for CIFAR's
in-memory path to import without the decoders."""

from __future__ import annotations

# Pillow's own default (PIL.Image.MAX_IMAGE_PIXELS): about 0.25 GiB as RGB, far above any training image
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def check_max_pixels(max_pixels: int) -> int:
    """A positive pixel count (the ``max_image_pixels`` setting)."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(
            f"max_image_pixels must be a positive pixel count (default {DEFAULT_MAX_IMAGE_PIXELS}), got {max_pixels!r}"
        )
    return max_pixels
