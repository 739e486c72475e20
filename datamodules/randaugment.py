"""A RandAugment-style policy assembled from albumentations ops.

albumentations has no RandAugment. This applies ``layers`` ops drawn uniformly
(with replacement) from a fixed list, each at the single strength
``magnitude`` (0..10); geometric and colour ops pick a random sign.
"""

from __future__ import annotations

from typing import Callable

import albumentations as A

MAX_MAGNITUDE = 10.0
GREY = 128
# Strength of each op at magnitude 10.
MAX_ROTATE_DEG = 30.0
MAX_SHEAR_DEG = 17.0
MAX_TRANSLATE = 0.3  # fraction of the side
MAX_ENHANCE = 0.9  # brightness/contrast/saturation factor offset from 1
MAX_POSTERIZE_DROP = 4  # bits removed


def _either_sign(make: Callable[[float], A.BasicTransform]) -> A.OneOf:
    return A.OneOf([make(1.0), make(-1.0)], p=1.0)


def _affine(**kwargs: object) -> A.Affine:
    return A.Affine(fill=GREY, border_mode=0, p=1.0, **kwargs)


def _jitter(name: str, factor: float) -> A.ColorJitter:
    kwargs = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": (0.0, 0.0)}
    kwargs[name] = (factor, factor)
    return A.ColorJitter(p=1.0, **kwargs)


def rand_augment(layers: int, magnitude: float) -> A.SomeOf:
    """Build the policy; ``layers`` ops per image at strength ``magnitude`` in [0, 10]."""
    if layers < 1:
        raise ValueError(f"randaugment_layers must be >= 1 to build a policy, got {layers}")
    if not 0.0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"randaugment_magnitude must be in [0, 10], got {magnitude}")
    s = magnitude / MAX_MAGNITUDE
    rotate, shear, shift, enhance = MAX_ROTATE_DEG * s, MAX_SHEAR_DEG * s, MAX_TRANSLATE * s, MAX_ENHANCE * s
    bits = 8 - round(MAX_POSTERIZE_DROP * s)
    ops: list[A.BasicTransform | A.OneOf] = [
        A.NoOp(p=1.0),
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
        A.Solarize(threshold_range=(1.0 - s, 1.0 - s), p=1.0),
        A.Posterize(num_bits=(bits, bits), p=1.0),
        A.Sharpen(alpha=(enhance, enhance), lightness=(1.0, 1.0), p=1.0),
        _either_sign(lambda sign: _affine(rotate=(sign * rotate, sign * rotate))),
        _either_sign(lambda sign: _affine(shear={"x": (sign * shear, sign * shear), "y": (0.0, 0.0)})),
        _either_sign(lambda sign: _affine(shear={"x": (0.0, 0.0), "y": (sign * shear, sign * shear)})),
        _either_sign(lambda sign: _affine(translate_percent={"x": (sign * shift, sign * shift), "y": (0.0, 0.0)})),
        _either_sign(lambda sign: _affine(translate_percent={"x": (0.0, 0.0), "y": (sign * shift, sign * shift)})),
    ]
    for name in ("brightness", "contrast", "saturation"):
        ops.append(_either_sign(lambda sign, name=name: _jitter(name, 1.0 + sign * enhance)))
    return A.SomeOf(ops, n=layers, replace=True, p=1.0)
