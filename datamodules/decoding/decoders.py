"""The image decoder, chosen once at import: torchcodec where it loads, else Pillow (with torchvision's
nvJPEG for batched CUDA decoding). Every path (train, val, test, predict; CPU workers and the device
path) decodes through here, so an image comes out the same everywhere: CHW uint8 RGB, upright per its
EXIF orientation, 16-bit and float samples scaled to 8 bits (see ``pillow_decode``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as torchvision_decode_jpeg

from datamodules.decoding.orientation import encoded_orientation, orient
from datamodules.decoding.pillow_decode import decode_with_pillow

logger = logging.getLogger(__name__)

try:
    from torchcodec.decoders import decode_image as torchcodec_decode_image
    from torchcodec.decoders import decode_jpeg as torchcodec_decode_jpeg
except (ImportError, OSError, RuntimeError) as exc:  # not installed, or its libraries fail to load
    torchcodec_decode_image = torchcodec_decode_jpeg = None
    TORCHCODEC_MISSING: Optional[str] = f"{type(exc).__name__}: {exc}"
else:
    TORCHCODEC_MISSING = None


@dataclass(frozen=True)
class ImageDecoder:
    name: str
    decode: Callable[[torch.Tensor], torch.Tensor]  # encoded bytes (1-D uint8, CPU) -> CHW uint8 RGB, upright
    decode_jpegs: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]  # a batch of JPEGs, on a device


def _pillow(data: torch.Tensor) -> torch.Tensor:
    return decode_with_pillow(data.numpy())


def _torchcodec(data: torch.Tensor) -> torch.Tensor:
    """torchcodec applies EXIF orientation and scales 16-bit PNGs to round(v / 257) itself."""
    try:
        image = torchcodec_decode_image(data, mode="RGB")
    except (ValueError, RuntimeError):  # a format it lacks (BMP, TIFF) or a file it refuses: Pillow reads or rejects it
        return _pillow(data)
    return image[0] if image.dim() == 4 else image  # an animation's first frame, as Pillow gives


def _torchcodec_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """On CUDA one nvJPEG call for the whole batch; torchcodec applies EXIF orientation there too."""
    return torchcodec_decode_jpeg(data, mode="RGB", device=device)


def _fallback_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Without torchcodec, CUDA batches go through torchvision's batched nvJPEG decode (deprecated since
    torchvision 0.29 in favour of torchcodec's, whose deprecation warning is left to show); it ignores EXIF
    orientation, which is applied here from each file's header. Off CUDA, Pillow decodes each file."""
    if device.type != "cuda":
        return [_pillow(d).to(device) for d in data]
    images = torchvision_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return [orient(image, encoded_orientation(d)) for image, d in zip(images, data)]


PILLOW = ImageDecoder("Pillow, with torchvision's nvJPEG for CUDA batches", _pillow, _fallback_jpegs)
TORCHCODEC = ImageDecoder("torchcodec", _torchcodec, _torchcodec_jpegs) if TORCHCODEC_MISSING is None else None
ACTIVE: ImageDecoder = TORCHCODEC or PILLOW
if TORCHCODEC_MISSING is None:
    logger.info("images are decoded with torchcodec")
else:
    logger.warning("torchcodec cannot be loaded (%s); images are decoded with %s", TORCHCODEC_MISSING, PILLOW.name)


def as_bytes_tensor(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    return data if isinstance(data, torch.Tensor) else torch.from_numpy(data)


def decode_rgb(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Encoded bytes -> CHW uint8 RGB, upright; raises (OSError, ValueError, RuntimeError) on corrupt data."""
    return ACTIVE.decode(as_bytes_tensor(data))


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> CHW uint8 RGB images on ``device``, upright; one bad file fails the whole call."""
    return ACTIVE.decode_jpegs(data, device)
