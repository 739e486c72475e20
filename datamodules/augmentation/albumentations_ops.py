"""A RandAugment-style policy assembled from albumentations ops.

albumentations has no RandAugment. This applies ``layers`` ops drawn uniformly
(with replacement) from a fixed list, each at the single strength
``magnitude``; geometric and colour ops pick a random sign. Every op reaches its
reference strength at magnitude 10; larger magnitudes (up to 30) extrapolate
linearly, as in the TensorFlow RandAugment behind the paper's magnitude 15, with
each op clamped to its valid range. The helpers below are shared with the
batched device policy (``batched_ops``), so both paths clamp alike.
"""

from __future__ import annotations

from typing import Callable

import albumentations as A

MAX_MAGNITUDE = 10.0  # the magnitude at which each op has the strength listed below
MAGNITUDE_LIMIT = 30.0
GREY = 128
# Strength of each op at magnitude 10.
MAX_ROTATE_DEG = 30.0
MAX_SHEAR_DEG = 17.0
MAX_TRANSLATE = 0.3  # fraction of the side
MAX_ENHANCE = 0.9  # brightness/contrast/saturation factor offset from 1
MAX_POSTERIZE_DROP = 4  # bits removed
MIN_ENHANCE_FACTOR = 0.1  # brightness/contrast/saturation never drop below 10% (as timm clamps)


def check_magnitude(magnitude: float) -> None:
    if not 0.0 <= magnitude <= MAGNITUDE_LIMIT:
        raise ValueError(
            f"randaugment_magnitude must be in [0, {MAGNITUDE_LIMIT:g}] (10 = each op's reference strength), got {magnitude}"
        )


def enhance_factor(sign: float, strength: float) -> float:
    """Brightness/contrast/saturation factor 1 +- 0.9 s, at least MIN_ENHANCE_FACTOR (s = magnitude / 10)."""
    return max(MIN_ENHANCE_FACTOR, 1.0 + sign * MAX_ENHANCE * strength)


def sharpen_alpha(strength: float) -> float:
    return min(1.0, MAX_ENHANCE * strength)


def solarize_threshold(strength: float) -> float:
    """Fraction of 255 above which pixels invert."""
    return max(0.0, 1.0 - strength)


def posterize_bits(strength: float) -> int:
    return max(1, 8 - round(MAX_POSTERIZE_DROP * strength))


def _either_sign(make: Callable[[float], A.BasicTransform]) -> A.OneOf:
    return A.OneOf([make(1.0), make(-1.0)], p=1.0)


def _affine(**kwargs: object) -> A.Affine:
    return A.Affine(fill=GREY, border_mode=0, p=1.0, **kwargs)


def _jitter(name: str, factor: float) -> A.ColorJitter:  # factor: see enhance_factor
    kwargs = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": (0.0, 0.0)}
    kwargs[name] = (factor, factor)
    return A.ColorJitter(p=1.0, **kwargs)


def rand_augment(layers: int, magnitude: float) -> A.SomeOf:
    """Build the policy; ``layers`` ops per image at strength ``magnitude`` in [0, 30]."""
    if layers < 1:
        raise ValueError(f"randaugment_layers must be >= 1 to build a policy, got {layers}")
    check_magnitude(magnitude)
    s = magnitude / MAX_MAGNITUDE
    rotate, shear, shift = MAX_ROTATE_DEG * s, MAX_SHEAR_DEG * s, MAX_TRANSLATE * s
    bits, alpha, threshold = posterize_bits(s), sharpen_alpha(s), solarize_threshold(s)
    ops: list[A.BasicTransform | A.OneOf] = [
        A.NoOp(p=1.0),
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
        A.Solarize(threshold_range=(threshold, threshold), p=1.0),
        A.Posterize(num_bits=(bits, bits), p=1.0),
        A.Sharpen(alpha=(alpha, alpha), lightness=(1.0, 1.0), p=1.0),
        _either_sign(lambda sign: _affine(rotate=(sign * rotate, sign * rotate))),
        _either_sign(lambda sign: _affine(shear={"x": (sign * shear, sign * shear), "y": (0.0, 0.0)})),
        _either_sign(lambda sign: _affine(shear={"x": (0.0, 0.0), "y": (sign * shear, sign * shear)})),
        _either_sign(lambda sign: _affine(translate_percent={"x": (sign * shift, sign * shift), "y": (0.0, 0.0)})),
        _either_sign(lambda sign: _affine(translate_percent={"x": (0.0, 0.0), "y": (sign * shift, sign * shift)})),
    ]
    for name in ("brightness", "contrast", "saturation"):
        ops.append(_either_sign(lambda sign, name=name: _jitter(name, enhance_factor(sign, s))))
    return A.SomeOf(ops, n=layers, replace=True, p=1.0)
