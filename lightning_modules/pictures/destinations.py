"""Where a picture goes: TensorBoard's Images tab, or a PNG file in the run folder of any other logger.

Lightning's ``Logger`` interface has no image call, but every logger that keeps files says where
(``log_dir``), so a CSV (or MLflow, W&B ...) run gets the same pictures as files it can be browsed with.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from PIL import Image
from torch import Tensor

TAG_PREFIX = "pictures/"
FOLDER = "pictures"


def png_path(log_dir: str | os.PathLike, name: str, step: int) -> Path:
    """``<log_dir>/pictures/<name>/step_<step>.png``; ``name`` may hold slashes (``attention/stage3``)."""
    return Path(log_dir) / FOLDER / name / f"step_{step}.png"


def save_png(image: Tensor, path: Path) -> None:
    """A uint8 CHW image as ``path``, renamed into place complete, so a reader never opens half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pixels = image.cpu().permute(1, 2, 0).numpy()  # torchvision's PNG writer is deprecated with its decoders
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(partial, format="PNG")
    os.replace(partial, path)


def keeps_pictures(logger: Logger) -> bool:
    """TensorBoard shows images; any other logger needs a local folder (``log_dir``) for the PNG files."""
    return isinstance(logger, TensorBoardLogger) or logger.log_dir is not None


def log_picture(loggers: Iterable[Logger], name: str, image: Tensor, step: int) -> None:
    """Give a uint8 CHW ``image`` to every logger: TensorBoard as tag ``pictures/<name>``, the others as a PNG."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(TAG_PREFIX + name, image, step)
        elif logger.log_dir is not None:
            save_png(image, png_path(logger.log_dir, name, step))
