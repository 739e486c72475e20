"""Procedural, learnable images: the zero-download default for quick starts and tests."""

from __future__ import annotations

import math

import numpy as np
import torch

from datamodules.base import ImageClassificationDataModule, ImageSize
from datamodules.sources.in_memory import TensorImageDataset

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
CLASS_STREAM = 99
NOISE_STD = 24.0
CHUNK = 1024


def _generator(*key: int) -> torch.Generator:
    state = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def class_patterns(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed per-class stripe orientation, frequency and two colours.

    Orientations are spread evenly over 180 degrees and frequencies cycle
    through 2..4 per image, so classes differ in shape, not only in colour.
    """
    g = _generator(seed, CLASS_STREAM)
    return {
        "angle": torch.arange(num_classes, dtype=torch.float32) * (math.pi / num_classes),
        "freq": 2.0 + (torch.arange(num_classes) % 3).float(),
        "colour_a": torch.rand(num_classes, 3, generator=g) * 255.0,
        "colour_b": torch.rand(num_classes, 3, generator=g) * 255.0,
    }


def render(
    labels: torch.Tensor, size: tuple[int, int], patterns: dict[str, torch.Tensor], g: torch.Generator
) -> torch.Tensor:
    """Draw one uint8 [N,3,H,W] image per label: class stripes with random phase, jitter, blob and noise."""
    n = len(labels)
    height, width = size
    ys = torch.linspace(0.0, 1.0, height).view(1, height, 1)
    xs = torch.linspace(0.0, 1.0, width).view(1, 1, width)
    angle = patterns["angle"][labels] + (torch.rand(n, generator=g) - 0.5) * (math.pi / 12)
    freq = patterns["freq"][labels] * (0.9 + 0.2 * torch.rand(n, generator=g))
    phase = torch.rand(n, generator=g) * 2 * math.pi
    proj = xs * angle.cos().view(n, 1, 1) + ys * angle.sin().view(n, 1, 1)
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq.view(n, 1, 1) * proj + phase.view(n, 1, 1))
    # a class-independent bright blob at a random position: a distractor the model must ignore
    centre = torch.rand(n, 2, generator=g)
    dist2 = (ys - centre[:, 0].view(n, 1, 1)) ** 2 + (xs - centre[:, 1].view(n, 1, 1)) ** 2
    blob = torch.exp(-dist2 / 0.01)
    a = patterns["colour_a"][labels].view(n, 3, 1, 1)
    b = patterns["colour_b"][labels].view(n, 3, 1, 1)
    # few full-size ops: this runs for every sample of every split in setup
    shade = stripes.mul_(1 - blob).add_(torch.randn(stripes.shape, generator=g), alpha=NOISE_STD / 255.0)
    image = torch.addcmul(b, a - b, shade[:, None]).add_(255.0 * blob[:, None])
    return image.clamp_(0, 255).to(torch.uint8)


def make_split(num_samples: int, num_classes: int, size: tuple[int, int], seed: int, split: str) -> TensorImageDataset:
    """Balanced labels (index mod classes); pixels depend only on (seed, split, size, count)."""
    patterns = class_patterns(num_classes, seed)
    g = _generator(seed, SPLIT_IDS[split])
    labels = torch.arange(num_samples) % num_classes
    chunks = [render(labels[i : i + CHUNK], size, patterns, g) for i in range(0, num_samples, CHUNK)]
    images = torch.cat(chunks) if chunks else torch.empty(0, 3, *size, dtype=torch.uint8)
    return TensorImageDataset(images, labels)


class SyntheticDataModule(ImageClassificationDataModule):
    """Generated striped images; learnable by a small CNN within a few hundred steps.

    Each class has its own stripe orientation, frequency and colours; every
    sample adds random phase, a distractor blob and pixel noise. All splits
    are generated once in ``setup`` (milliseconds) from ``seed``.

    Args:
        num_classes: number of pattern classes.
        train_size, val_size, test_size: samples per split.
        batch_size: images per batch PER DEVICE.
        eval_batch_size: images per validation/test batch (default: batch_size).
        num_workers: defaults to 0 because the data is already in memory.
        Others: see ``ImageClassificationDataModule``.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        image_size: ImageSize = 32,
        train_size: int = 5000,
        val_size: int = 1000,
        test_size: int = 1000,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        seed: int = 0,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            image_size=image_size,
            mean=mean,
            std=std,
            seed=seed,
        )
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.split_sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        self.save_hyperparameters(logger=False)

    def setup(self, stage: str | None = None) -> None:
        self.class_names = [f"pattern_{i}" for i in range(self.num_classes)]
        made = {
            split: make_split(n, self.num_classes, self.image_size, self.seed, split)
            for split, n in self.split_sizes.items()
            if getattr(self, f"{split}_set") is None
        }
        self.train_set = made.get("train", self.train_set)
        self.val_set = made.get("val", self.val_set)
        self.test_set = made.get("test", self.test_set)
