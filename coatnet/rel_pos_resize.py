"""Resizing a relative-position table to another grid: fine-tuning or evaluating at another resolution.

Used by ``CoAtNet.set_img_size`` (through each table's ``resize``) and by the weights loader, which
resizes the tables of a checkpoint trained at another input size before loading them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def resize_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a ((2H-1)(2W-1), heads) table; the extreme offsets map onto each other."""
    old_shape = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    new_shape = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    if table.shape[0] != old_shape[0] * old_shape[1]:
        raise ValueError(f"table has {table.shape[0]} rows, expected {old_shape[0] * old_shape[1]} for grid {old_grid}")
    if old_shape == new_shape:
        return table.clone()
    # einops names the (dy, dx) offset grid that the table's rows flatten, row-major.
    image = rearrange(table, "(dy dx) heads -> 1 heads dy dx", dy=old_shape[0]).float()
    resized = F.interpolate(image, size=new_shape, mode="bicubic", align_corners=True)
    return rearrange(resized, "1 heads dy dx -> (dy dx) heads").contiguous().to(table.dtype)
