"""Figures drawn straight into uint8 ``[3, H, W]`` tensors for TensorBoard, without matplotlib.

Text uses Pillow's built-in font; colour maps are piecewise-linear lookups over a few anchor colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

# Anchor colours (0..255) spread evenly over [0, 1].
SEQUENTIAL = ((255, 255, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
DIVERGING = ((33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43))
RIGHT, WRONG = (40, 170, 60), (220, 30, 30)
QUERY = (255, 140, 0)  # frame of the query cell in attention maps: visible on white and on dark blue
FONT_SIZE = 11


def colormap(values: Tensor, anchors: Sequence[tuple[int, int, int]] = SEQUENTIAL) -> Tensor:
    """Map values in [0, 1] (any shape ``S``) to uint8 colours ``[3, *S]``; NaN gets the lowest colour (a NaN
    index would crash the lookup, and weights turn NaN before the NaN guard reads the loss)."""
    table = torch.tensor(anchors, dtype=torch.float32)
    pos = values.float().nan_to_num(0.0).clamp(0, 1) * (len(anchors) - 1)
    low = pos.floor().long().clamp(max=len(anchors) - 2)
    frac = (pos - low).unsqueeze(-1)
    rgb = table[low] * (1 - frac) + table[low + 1] * frac
    return rgb.round().to(torch.uint8).movedim(-1, 0)


def upscale(image: Tensor, min_side: int) -> Tensor:
    """Nearest-neighbour enlargement by an integer factor until the short side is >= ``min_side``."""
    factor = max(1, -(-min_side // min(image.shape[-2:])))
    return image if factor == 1 else image.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def text_block(lines: Sequence[str], width: int, colours: Sequence[tuple[int, int, int]] | None = None) -> Tensor:
    """White ``[3, h, width]`` strip holding one line of text per entry (cut to fit)."""
    font, line_h = _font(), FONT_SIZE + 3
    canvas = Image.new("RGB", (width, line_h * len(lines) + 2), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text(
            (2, 1 + i * line_h), _fit(line, width - 4, font), fill=colours[i] if colours else (0, 0, 0), font=font
        )
    return pil_to_tensor(canvas)


def _fit(text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text`` shortened until it is at most ``width`` pixels wide."""
    while text and font.getlength(text) > width:
        text = text[:-1]
    return text


def pil_to_tensor(image: Image.Image) -> Tensor:
    """PIL image -> uint8 ``[3, H, W]``."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def bordered(image: Tensor, colour: tuple[int, int, int], width: int = 3) -> Tensor:
    """Frame a uint8 ``[3, H, W]`` image with a coloured border of ``width`` pixels."""
    out = (
        torch.tensor(colour, dtype=torch.uint8)
        .view(3, 1, 1)
        .repeat(1, image.shape[1] + 2 * width, image.shape[2] + 2 * width)
    )
    out[:, width:-width, width:-width] = image
    return out


def prediction_grid(
    images: Tensor,
    preds: Tensor,
    probs: Tensor,
    labels: Tensor,
    names: Sequence[str],
    min_side: int = 96,
    nrow: int = 8,
) -> Tensor:
    """Images (float [N,3,H,W] in 0..1) with "pred (prob)" / "true" captions; wrong ones framed red."""
    tiles = []
    for image, pred, prob, label in zip(images, preds.tolist(), probs.tolist(), labels.tolist()):
        pixels = upscale((image * 255).round().to(torch.uint8), min_side)
        colour = RIGHT if pred == label else WRONG
        caption = text_block(
            [f"P: {names[pred]} ({prob:.2f})", f"T: {names[label]}"], pixels.shape[2], [colour, (0, 0, 0)]
        )
        tiles.append(bordered(torch.cat([pixels, caption], dim=1), colour))
    return make_grid(tiles, nrow=min(nrow, len(tiles)), padding=4, pad_value=255)


def confusion_image(matrix: Tensor, names: Sequence[str], max_px: int = 640, margin: int = 90) -> Tensor:
    """Row-normalised confusion matrix (rows = true, columns = predicted) as a heat map.

    Class names label the rows and (turned upright) the columns when the cells are tall enough for text.
    """
    classes = matrix.shape[0]
    rates = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    cell = max(2, min(32, max_px // classes))
    heat = upscale(colormap(rates), classes * cell)
    if cell < FONT_SIZE + 3:
        return heat
    side = classes * cell
    font = _font()
    canvas = Image.new("RGB", (margin + side, margin + side), "white")
    canvas.paste(Image.fromarray(heat.permute(1, 2, 0).numpy()), (margin, margin))
    columns = Image.new("RGB", (margin, side), "white")  # drawn as rows, then rotated into columns
    draw, draw_columns = ImageDraw.Draw(canvas), ImageDraw.Draw(columns)
    for i in range(classes):
        y = i * cell + (cell - FONT_SIZE) // 2
        draw.text((2, margin + y), _fit(names[i], margin - 4, font), fill="black", font=font)
        draw_columns.text((2, y), _fit(names[i], margin - 4, font), fill="black", font=font)
    canvas.paste(columns.rotate(90, expand=True), (margin, 0))
    draw.text((2, margin - FONT_SIZE - 4), "true \\ pred", fill="black", font=font)
    return pil_to_tensor(canvas)


def top_confusions_table(matrix: Tensor, names: Sequence[str], k: int = 30, width: int = 520) -> Tensor:
    """Text table of the ``k`` largest off-diagonal counts, for too many classes to draw a matrix."""
    off = matrix.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().topk(min(k, off.numel()))
    classes = matrix.shape[0]
    lines = ["count  true -> predicted"]
    lines += [
        f"{c:5d}  {names[i // classes]} -> {names[i % classes]}"
        for c, i in zip(counts.tolist(), flat.tolist())
        if c > 0
    ]
    return text_block(lines, width)


def head_maps(tables: Sequence[Tensor], grid: tuple[int, int], min_side: int = 48) -> Tensor:
    """Relative-position bias tables ``((2H-1)(2W-1), heads)`` of one stage as a blocks x heads grid.

    Each map is coloured blue (negative) - white (0) - red (positive), scaled by its own max |value|,
    so the centre pixel (offset 0) and the shape of the decay with distance are visible per head.
    """
    shape = (2 * grid[0] - 1, 2 * grid[1] - 1)
    tiles = []
    for table in tables:
        maps = table.detach().float().cpu().t().reshape(-1, *shape)
        scale = maps.flatten(1).abs().amax(dim=1).clamp(min=1e-8).view(-1, 1, 1)
        tiles += [upscale(colormap(0.5 + 0.5 * m, DIVERGING), min_side) for m in maps / scale]
    heads = tables[0].shape[1]
    return make_grid(tiles, nrow=heads, padding=2, pad_value=255)


def attention_rows(images: Tensor, weights: Tensor, grid: tuple[int, int], query: int, min_side: int = 64) -> Tensor:
    """One row per image: the image, then one map per head of ``weights`` ``(B, heads, H*W)``.

    Maps are scaled by their own maximum (dark blue = the most-attended key, white = none or negative),
    upscaled by whole pixels so that each grid cell covers the image patch it stands for. The query
    cell is framed in orange on the image and on every map.
    """
    tiles = []
    for image, maps in zip(images, weights.detach().float().cpu()):
        pixels = upscale((image * 255).round().to(torch.uint8), min_side)
        maps = maps.reshape(-1, *grid)
        maps = maps / maps.flatten(1).amax(dim=1).clamp(min=1e-8).view(-1, 1, 1)
        row = [pixels] + [upscale(colormap(m), min(pixels.shape[-2:])) for m in maps]
        tiles += [_frame_cell(tile, grid, query) for tile in row]
    return make_grid(tiles, nrow=1 + weights.shape[1], padding=2, pad_value=255)


def _frame_cell(tile: Tensor, grid: tuple[int, int], index: int, width: int = 2) -> Tensor:
    """Copy of ``tile`` with the grid cell ``index`` (row-major) outlined in the ``QUERY`` colour."""
    cell_h, cell_w = tile.shape[1] // grid[0], tile.shape[2] // grid[1]
    top, left = (index // grid[1]) * cell_h, (index % grid[1]) * cell_w
    out = tile.clone()
    box = out[:, top : top + cell_h, left : left + cell_w]
    colour = torch.tensor(QUERY, dtype=torch.uint8).view(3, 1, 1)
    box[:, :width] = box[:, -width:] = colour
    box[:, :, :width] = box[:, :, -width:] = colour
    return out
