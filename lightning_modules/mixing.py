"""Mixup and CutMix on a whole batch, producing soft (label-smoothed) targets.

One mixing coefficient is drawn per batch and every image is paired with another image of the
same batch through a random permutation. Randomness comes from torch's global generators, so
``seed_everything`` makes runs repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """One-hot targets with ``smoothing`` spread uniformly over all classes (rows sum to 1)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device, dtype=torch.float32)
    targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)
    return targets


def random_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly and clipped to the borders.

    Returns ``(top, bottom, left, right)``; clipping makes the real area smaller than asked,
    which is why callers recompute ``lam`` from the box.
    """
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, (1,)).item())
    cx = int(torch.randint(width, (1,)).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return top, bottom, left, right


@dataclass
class MixResult:
    """A mixed batch: ``images``, soft ``targets`` ``[B, C]``, the effective ``lam`` and the ``mode``."""

    images: Tensor
    targets: Tensor
    lam: float
    mode: str  # "mixup", "cutmix" or "none"
    permutation: Tensor | None


@dataclass
class MixupCutmix:
    """Batch-level Mixup / CutMix with label smoothing.

    With probability ``mix_prob`` a batch is mixed. When both alphas are positive, CutMix is
    chosen with probability ``switch_prob`` and Mixup otherwise; when only one alpha is positive
    that method is always used. An alpha of 0 disables its method. The ranges are checked once, by the
    caller's argument types (``ImageClassifier``'s, at parse time and on construction).
    """

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    def _choose_mode(self) -> str:
        enabled = self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)
        if not enabled or torch.rand(()).item() >= self.mix_prob:  # no draw when disabled: the streams stay put
            return "none"
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return "cutmix" if torch.rand(()).item() < self.switch_prob else "mixup"
        return "cutmix" if self.cutmix_alpha > 0 else "mixup"

    @staticmethod
    def _sample_lam(alpha: float) -> float:
        return float(torch.distributions.Beta(alpha, alpha).sample().item())

    def __call__(self, images: Tensor, labels: Tensor) -> MixResult:
        """Mix ``images`` ``[B, C, H, W]`` with hard ``labels`` ``[B]``; the inputs are not modified."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        mode = self._choose_mode()
        if mode == "none":
            return MixResult(images, targets, 1.0, mode, None)
        perm = torch.randperm(images.shape[0], device=images.device)
        if mode == "mixup":
            lam = self._sample_lam(self.mixup_alpha)
            mixed = images * lam + images[perm] * (1.0 - lam)
        else:
            height, width = images.shape[-2:]
            top, bottom, left, right = random_box(height, width, self._sample_lam(self.cutmix_alpha))
            mixed = images.clone()
            mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
        mixed_targets = targets * lam + targets[perm] * (1.0 - lam)
        return MixResult(mixed, mixed_targets, lam, mode, perm)
