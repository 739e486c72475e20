"""The checks of the settings every DataModule shares (image size, normalisation), each failing with one line that
names the setting and the fix."""

from __future__ import annotations

ImageSize = int | tuple[int, int]


def to_hw(image_size: ImageSize) -> tuple[int, int]:
    """Normalise an int or (height, width) to a (height, width) tuple of ints."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    return size  # type: ignore[return-value]


def check_image_size(image_size: ImageSize) -> tuple[int, int]:
    """A positive (height, width). Which sizes fit is the model's rule (a multiple of its total stride: 32, or 16
    with a stride-1 stem); the model built for this size says so when it is not."""
    height, width = to_hw(image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size {height}x{width} is not allowed: both sides must be positive (e.g. 32, 224, 384)")
    return height, width


def _on_unit_scale(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v / 255:.4g}" for v in values) + "]"


def check_normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Images are scaled to 0..1 before normalising, so mean must lie in [0, 1] and std in (0, 1]: values on
    the 0..255 scale (e.g. mean 123.675) would silently push every input to about -2."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (one per RGB channel), got mean={list(mean)}, std={list(std)}")
    if not all(0.0 <= m <= 1.0 for m in mean):
        raise ValueError(
            f"mean={list(mean)} is not on the 0..1 scale images are normalised on; "
            f"values in [0, 1] are needed (divided by 255: mean={_on_unit_scale(mean)})."
        )
    if not all(0.0 < s <= 1.0 for s in std):
        raise ValueError(
            f"std={list(std)} is not on the 0..1 scale images are normalised on; "
            f"values in (0, 1] are needed (divided by 255: std={_on_unit_scale(std)})."
        )
