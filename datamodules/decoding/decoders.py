"""The image decoder, chosen once at import: torchcodec where it loads, else Pillow (with torchvision's
nvJPEG for batched CUDA decoding). Every path (train, val, test, predict; CPU workers and the device
path) decodes through here, so an image comes out the same everywhere: CHW uint8 RGB, upright per its
EXIF orientation, 16-bit and float samples scaled to 8 bits (see ``pillow_decode``).

Here too every file is checked against one pixel limit (``max_image_pixels``) from its header before any
pixel is decoded, and every decoder failure, whatever the library raises, becomes ``ImageDecodeError``,
which the callers' corrupt-file policy handles.
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from packaging.version import InvalidVersion, Version
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as torchvision_decode_jpeg

from datamodules.decoding.header_size import header_size
from datamodules.decoding.orientation import encoded_orientation, orient
from datamodules.decoding.pillow_decode import decode_with_pillow
from datamodules.decoding.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS
from datamodules.errors import ImageDecodeError

logger = logging.getLogger(__name__)

MIN_TORCHCODEC = "0.16"  # older releases lack decode_image/decode_jpeg as used here, so every image fell back
TORCHCODEC_FIX = f"pip install 'torchcodec>={MIN_TORCHCODEC}'"


def installed_torchcodec() -> str | None:
    try:
        return importlib.metadata.version("torchcodec")
    except importlib.metadata.PackageNotFoundError:
        return None


def torchcodec_too_old(version: str | None) -> bool:
    if version is None:
        return False
    try:
        return Version(version) < Version(MIN_TORCHCODEC)
    except InvalidVersion:
        return False


TORCHCODEC_VERSION = installed_torchcodec()
try:
    if torchcodec_too_old(TORCHCODEC_VERSION):
        raise ImportError(f"torchcodec {TORCHCODEC_VERSION} is older than {MIN_TORCHCODEC}")
    from torchcodec.decoders import decode_image as torchcodec_decode_image
    from torchcodec.decoders import decode_jpeg as torchcodec_decode_jpeg
except (ImportError, OSError, RuntimeError) as exc:  # not installed, too old, or its libraries fail to load
    torchcodec_decode_image = torchcodec_decode_jpeg = None
    TORCHCODEC_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    TORCHCODEC_MISSING = None


@dataclass(frozen=True)
class ImageDecoder:
    name: str
    decode: Callable[[torch.Tensor], torch.Tensor]  # encoded bytes (1-D uint8, CPU) -> CHW uint8 RGB, upright
    decode_jpegs: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]  # a batch of JPEGs, on a device


def _pillow(data: torch.Tensor) -> torch.Tensor:
    return decode_with_pillow(data.numpy())


def may_be_animated(data: torch.Tensor) -> bool:
    """GIF, or WebP whose VP8X header sets the animation flag: torchcodec would decode every frame (a thousand
    frames of a size under the pixel limit would fill any memory), where only the first is used."""
    head = data[:21].numpy().tobytes()
    if head.startswith(b"GIF8"):
        return True
    return len(head) > 20 and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


def _torchcodec(data: torch.Tensor) -> torch.Tensor:
    """torchcodec applies EXIF orientation and scales 16-bit PNGs to round(v / 257) itself; animations go to
    Pillow, which decodes their first frame only."""
    if may_be_animated(data):
        return _pillow(data)
    try:
        image = torchcodec_decode_image(data, mode="RGB")
    except (ValueError, RuntimeError):  # a format it lacks (BMP, TIFF) or a file it refuses: Pillow reads or rejects it
        return _pillow(data)
    return image[0] if image.dim() == 4 else image  # an animation not flagged in its header: its first frame


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
elif torchcodec_too_old(TORCHCODEC_VERSION):
    _too_old = (
        f"torchcodec {TORCHCODEC_VERSION} is installed, but this project needs torchcodec>={MIN_TORCHCODEC}: "
        f"every image is decoded with {PILLOW.name} instead (slower). Fix: {TORCHCODEC_FIX}"
    )
    logger.warning(_too_old)
    warnings.warn(_too_old, stacklevel=2)  # shown even where logging is not configured
else:
    logger.warning("torchcodec cannot be loaded (%s); images are decoded with %s", TORCHCODEC_MISSING, PILLOW.name)


def refuse_over_limit(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{width}x{height} pixels ({width * height / 1e6:.1f} Mpx) is over the limit of {max_pixels / 1e6:.1f} Mpx "
            "(a decompression bomb, or a genuine huge image: then raise max_image_pixels)"
        )


def check_header(data: torch.Tensor, max_pixels: int) -> None:
    """Refuse an empty file, or one whose header declares more than ``max_pixels``, before anything decodes it."""
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    size = header_size(data.numpy())
    if size is not None:
        refuse_over_limit(*size, max_pixels)


def as_bytes_tensor(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    return data if isinstance(data, torch.Tensor) else torch.from_numpy(data)


def decode_rgb(data: np.ndarray | torch.Tensor, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Encoded bytes -> CHW uint8 RGB, upright; raises ``ImageDecodeError`` for a file over ``max_pixels`` or one
    that does not decode."""
    data = as_bytes_tensor(data)
    check_header(data, max_pixels)
    try:
        image = ACTIVE.decode(data)
    except Exception as exc:  # decoders raise many types (cv2.error, RuntimeError, PIL's, ...): all mean a bad file
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from exc
    refuse_over_limit(image.shape[-1], image.shape[-2], max_pixels)  # formats whose header Pillow cannot read
    return image


def decode_jpegs(
    data: list[torch.Tensor], device: torch.device, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> list[torch.Tensor]:
    """JPEG bytes -> CHW uint8 RGB images on ``device``, upright; one bad file fails the whole call
    (``ImageDecodeError``), so callers retry file by file to find it."""
    for one in data:
        check_header(one, max_pixels)
    try:
        return ACTIVE.decode_jpegs(data, device)
    except Exception as exc:  # nvJPEG and the CPU decoders raise many types for a bad file
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from exc
