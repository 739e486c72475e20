"""Device-side decode + crop for the image-folder "gpu" path.

Workers only read bytes; here JPEGs are decoded in one batched call on the
batch's device (nvJPEG on CUDA, see ``decoders``), cropped per image with the
same box sampler as the CPU path and augmented batched, in the CPU path's
order. Non-JPEG files are decoded on the CPU, exactly as the CPU path decodes
them. On CUDA this work can run on a second stream (``on_side_stream``),
overlapping the previous training step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

from datamodules.augmentation.crops import CropBox, eval_crop_box, sample_resized_crop
from datamodules.augmentation.recipe import AugmentExecutor, TrainAugment
from datamodules.augmentation.tensor_ops import Interpolation, crop_resize
from datamodules.decoding.decoders import DEFAULT_MAX_IMAGE_PIXELS, decode_jpegs, decode_rgb
from datamodules.decoding.encoded_images import (
    DECODE_ERRORS,
    CorruptFiles,
    EncodedImages,
)
from datamodules.errors import DatasetError

JPEG_MAGIC = (0xFF, 0xD8, 0xFF)


def is_jpeg(data: torch.Tensor) -> bool:
    return len(data) >= 3 and tuple(data[:3].tolist()) == JPEG_MAGIC


def _decode_one(data: torch.Tensor, device: torch.device, max_pixels: int) -> torch.Tensor:
    """A JPEG alone on ``device``, else (other formats, and JPEGs the device decoder refuses) on the CPU."""
    if is_jpeg(data):
        try:
            return decode_jpegs([data], device, max_pixels)[0]
        except DECODE_ERRORS:
            pass  # e.g. a JPEG nvJPEG cannot read: the CPU decoder reads or rejects it
    return decode_rgb(data, max_pixels).to(device, non_blocking=True)


def decode_batch(
    batch: EncodedImages, device: torch.device, corrupt: CorruptFiles, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[list[torch.Tensor], list[int]]:
    """Decode every file to CHW uint8 on ``device`` as the CPU path does (``decoders``); unreadable ones, and
    those over ``max_pixels``, follow ``corrupt``'s policy.

    Returns the images and, per slot, the index of the file it came from: a
    skipped file's slot reuses a good image of the batch (so the batch keeps
    its size), and the caller must take labels from those indices.
    """
    images: list[torch.Tensor | None] = [None] * len(batch)
    jpegs = [i for i, d in enumerate(batch.data) if is_jpeg(d)]
    if jpegs:
        try:
            for i, image in zip(jpegs, decode_jpegs([batch.data[i] for i in jpegs], device, max_pixels)):
                images[i] = image
        except DECODE_ERRORS:
            pass  # one bad file fails the whole call; retry one by one below to find it
    for i, image in enumerate(images):
        if image is None:
            try:
                images[i] = _decode_one(batch.data[i], device, max_pixels)
            except DECODE_ERRORS as exc:
                corrupt.report(batch.paths[i], exc)
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        raise DatasetError(f"no image of the batch could be decoded (first: {batch.paths[0]}); check the files.")
    sources = [i if images[i] is not None else good[0] for i in range(len(images))]
    return [images[i] for i in sources], sources


class DeviceCropper:
    """Train: the recipe's random-resized crop, then its executor (flip, RandAugment, jitter, erasing), as the
    CPU path; eval: centre crop. Resizes each image to ``size`` on its device.

    With ``preset="cifar"`` the whole image is resized and the executor's pad-crop replaces the resized crop.
    Every augmentation setting is read from ``recipe``.
    """

    def __init__(
        self,
        size: tuple[int, int],
        interpolation: Interpolation,
        crop_pct: float,
        recipe: TrainAugment,
        preset: Literal["imagenet", "cifar"] = "imagenet",
    ) -> None:
        self.size, self.interpolation, self.crop_pct, self.preset = size, interpolation, crop_pct, preset
        self.recipe = recipe
        self.augment = AugmentExecutor(recipe, "pad" if preset == "cifar" else "resized")

    @staticmethod
    def batch_rng() -> np.random.Generator:
        """One batch's crop stream, seeded from torch's global CPU stream: checkpoints save that
        stream and DDP ranks split it (``RandomState``), so resumed runs and ranks draw as they should."""
        return np.random.default_rng(int(torch.randint(2**62, ()).item()))

    def __call__(self, images: list[torch.Tensor], train: bool) -> torch.Tensor:
        """List of CHW uint8 images (any sizes) -> float [B,3,H,W] in 0..255."""
        if self.preset == "cifar":
            boxes = [CropBox(0, 0, *im.shape[-2:]) for im in images]
        elif train:
            rng = self.batch_rng()
            boxes = [sample_resized_crop(*im.shape[-2:], self.recipe.scale, self.recipe.ratio, rng) for im in images]
        else:
            boxes = [eval_crop_box(*im.shape[-2:], self.size, self.crop_pct) for im in images]
        out = torch.stack([crop_resize(im, box, self.size, self.interpolation) for im, box in zip(images, boxes)])
        return self.augment(out.round_()) if train else out


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


@contextmanager
def on_side_stream(device: torch.device, enabled: bool = True) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Run the body on a second CUDA stream of ``device``; ``hand_over(t)`` makes ``t`` safe to use on the
    current stream afterwards (the current stream waits for the side stream, and the allocator keeps
    ``t``'s memory until the current stream is done with it).

    The side stream does not wait for the work already queued, so the body can run on the GPU while
    the previous step is still executing. Its inputs must not come from that queued work (encoded
    files and host-drawn parameters do not). Elsewhere (CPU, ``enabled`` false) it runs in place.
    """
    if device.type != "cuda" or not enabled:
        yield lambda tensor: tensor
        return
    side = _SIDE_STREAMS.setdefault(device, torch.cuda.Stream(device))
    current = torch.cuda.current_stream(device)
    handed: list[torch.Tensor] = []

    def hand_over(tensor: torch.Tensor) -> torch.Tensor:
        handed.append(tensor)
        return tensor

    with torch.cuda.stream(side):
        yield hand_over
    current.wait_stream(side)
    for tensor in handed:
        tensor.record_stream(current)
