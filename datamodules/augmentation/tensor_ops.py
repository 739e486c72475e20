"""Batched uint8 augmentation and crop-resize on tensors (any device).

The CPU loaders call these with a batch of one, the device path with the whole
batch, so both apply the same augmentation distribution.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from datamodules.augmentation.crops import CropBox

PadMode = Literal["reflect", "zero"]
Interpolation = Literal["bilinear", "bicubic"]


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor (indices, parameters drawn on the host) to ``device`` without a sync.

    ``tensor.to("cuda")`` from pageable memory waits for the GPU to finish its queue first;
    from page-locked memory with ``non_blocking`` the copy is queued like a kernel. torch's
    pinned-memory cache keeps the host buffer alive until the copy has run.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=device.type != "mps")  # MPS copies stay blocking, as in Lightning


def _source_index(
    offset: torch.Tensor, length: int, padding: int, pad_mode: PadMode
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into the unpadded axis for each output pixel, plus a validity mask for zero padding."""
    idx = offset[:, None] - padding + torch.arange(length, device=offset.device)
    if pad_mode == "reflect":
        idx = idx.abs()
        idx = torch.where(idx >= length, 2 * (length - 1) - idx, idx)
        return idx, torch.ones_like(idx, dtype=torch.bool)
    valid = (idx >= 0) & (idx < length)
    return idx.clamp(0, length - 1), valid


def pad_crop_flip(
    images: torch.Tensor, padding: int, pad_mode: PadMode, flip_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop of a ``padding``-padded image back to its size, then random h-flip.

    Done as one gather (no padded copy is materialised), so it stays uint8 and
    costs one pass over the batch. Draws come from ``generator`` (default: the device's global stream).
    """
    batch, _, height, width = images.shape
    device = images.device
    oy = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    rows, row_ok = _source_index(oy, height, padding, pad_mode)
    cols, col_ok = _source_index(ox, width, padding, pad_mode)
    flip = torch.rand(batch, device=device, generator=generator) < flip_p
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    col_ok = torch.where(flip[:, None], col_ok.flip(1), col_ok)
    b = torch.arange(batch, device=device)[:, None, None]
    out = images[b, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    if pad_mode == "zero":
        out = out * (row_ok[:, :, None] & col_ok[:, None, :])[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(images: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    if p <= 0:
        return images
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_erase(
    images: torch.Tensor,
    p: float,
    scale: tuple[float, float] = (0.02, 1.0 / 3.0),
    ratio: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability ``p`` per image, overwrite one random rectangle with uniform noise."""
    if p <= 0:
        return images
    batch, _, height, width = images.shape
    device = images.device
    area = torch.empty(batch, device=device).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    h = (area / aspect).sqrt().round().clamp(1, height)
    w = (area * aspect).sqrt().round().clamp(1, width)
    top = (torch.rand(batch, device=device, generator=generator) * (height - h + 1)).floor()
    left = (torch.rand(batch, device=device, generator=generator) * (width - w + 1)).floor()
    ys = torch.arange(height, device=device)[None, :]
    xs = torch.arange(width, device=device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < (top + h)[:, None])
    in_cols = (xs >= left[:, None]) & (xs < (left + w)[:, None])
    apply = torch.rand(batch, device=device, generator=generator) < p
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])[:, None]
    noise = torch.randint(0, 256, images.shape, device=device, dtype=torch.uint8, generator=generator).to(images.dtype)
    return torch.where(mask, noise, images)


def crop_resize(
    image: torch.Tensor, box: CropBox, size: tuple[int, int], interpolation: Interpolation, flip: bool = False
) -> torch.Tensor:
    """Cut ``box`` out of a CHW image and resample it to ``size`` (float 0..255 out).

    Antialiasing keeps strong downscales (large photos to 224) from aliasing,
    matching the area filter the CPU path uses for shrinking.
    """
    crop = image[:, box.top : box.top + box.height, box.left : box.left + box.width]
    if flip:
        crop = crop.flip(-1)
    crop = crop.unsqueeze(0).float()
    if tuple(crop.shape[-2:]) != tuple(size):
        crop = F.interpolate(crop, size=size, mode=interpolation, antialias=True, align_corners=False)
    return crop.squeeze(0).clamp_(0.0, 255.0)
