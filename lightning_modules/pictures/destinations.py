"""Where a picture goes: each logger's own image call where it has one, else a PNG file in its run folder.

TensorBoard gets tag ``pictures/<name>`` (Images tab), W&B ``WandbLogger.log_image`` under the same key (media
panels), MLflow ``MlflowClient.log_image`` under the same key (the run's image series); any other logger that
keeps files (CSV, ...) gets ``<log_dir>/pictures/<name>/step_<global step>.png``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch import Tensor

TAG_PREFIX = "pictures/"
FOLDER = "pictures"
WITH_IMAGE_CALL = (TensorBoardLogger, WandbLogger, MLFlowLogger)


def png_path(log_dir: str | os.PathLike, name: str, step: int) -> Path:
    """``<log_dir>/pictures/<name>/step_<step>.png``; ``name`` may hold slashes (``attention/stage3``)."""
    return Path(log_dir) / FOLDER / name / f"step_{step}.png"


def hwc_pixels(image: Tensor) -> np.ndarray:
    """A uint8 CHW image as the HWC (or HW for one channel) array image libraries take."""
    pixels = image.cpu().permute(1, 2, 0).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def save_png(image: Tensor, path: Path) -> None:
    """A uint8 CHW image as ``path``, renamed into place complete, so a reader never opens half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(hwc_pixels(image)).save(partial, format="PNG")  # torchvision's writer is deprecated
    os.replace(partial, path)


def keeps_pictures(logger: Logger) -> bool:
    """A logger with an image call of its own, or one with a local folder (``log_dir``) for PNG files."""
    return isinstance(logger, WITH_IMAGE_CALL) or logger.log_dir is not None


def log_picture(loggers: Iterable[Logger], name: str, image: Tensor, step: int) -> None:
    """Give a uint8 CHW ``image`` to every logger, as ``pictures/<name>`` at ``step`` (see the module docstring)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(TAG_PREFIX + name, image, step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(TAG_PREFIX + name, [hwc_pixels(image)], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, hwc_pixels(image), key=TAG_PREFIX + name, step=step)
        elif logger.log_dir is not None:
            save_png(image, png_path(logger.log_dir, name, step))
