"""The RandAugment-style policy of ``policy`` executed with albumentations ops, one image at a time: the
reference the batched executor (``batched_ops``) is checked against, op by op (``test_batched_augment``).
The loaders no longer use albumentations (unmaintained since 2.0.8); this keeps its OpenCV arithmetic as the
test's independent anchor.

albumentations has no RandAugment. This applies ``layers`` ops drawn uniformly (with replacement)
from ``policy.POLICY``, each at the single strength ``magnitude``; signed ops pick a random sign.
"""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise
import albumentations as A  # noqa: E402

from datamodules.augmentation.policy import GREY, POLICY, PolicyOp, strength  # noqa: E402


def _affine(**kwargs: object) -> A.Affine:
    return A.Affine(fill=GREY, border_mode=0, p=1.0, **kwargs)


def _jitter(name: str, factor: float) -> A.ColorJitter:
    kwargs = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": (0.0, 0.0)}
    kwargs[name] = (factor, factor)
    return A.ColorJitter(p=1.0, **kwargs)


def _fixed(value: float) -> tuple[float, float]:
    return (value, value)


# op name -> the albumentations transform for that op's setting (see policy.POLICY)
TRANSFORMS: dict[str, Callable[[float], A.BasicTransform]] = {
    "identity": lambda _: A.NoOp(p=1.0),
    "auto_contrast": lambda _: A.AutoContrast(p=1.0),
    "equalize": lambda _: A.Equalize(p=1.0),
    "solarize": lambda threshold: A.Solarize(threshold_range=_fixed(threshold), p=1.0),
    "posterize": lambda bits: A.Posterize(num_bits=_fixed(int(bits)), p=1.0),
    "sharpen": lambda alpha: A.Sharpen(alpha=_fixed(alpha), lightness=(1.0, 1.0), p=1.0),
    "rotate": lambda degrees: _affine(rotate=_fixed(degrees)),
    "shear_x": lambda degrees: _affine(shear={"x": _fixed(degrees), "y": (0.0, 0.0)}),
    "shear_y": lambda degrees: _affine(shear={"x": (0.0, 0.0), "y": _fixed(degrees)}),
    "translate_x": lambda fraction: _affine(translate_percent={"x": _fixed(fraction), "y": (0.0, 0.0)}),
    "translate_y": lambda fraction: _affine(translate_percent={"x": (0.0, 0.0), "y": _fixed(fraction)}),
    "brightness": lambda factor: _jitter("brightness", factor),
    "contrast": lambda factor: _jitter("contrast", factor),
    "saturation": lambda factor: _jitter("saturation", factor),
}


def _transform(op: PolicyOp, s: float) -> A.BasicTransform | A.OneOf:
    """The op at strength ``s``; a signed op is a OneOf of its + and - transforms (in that order)."""
    make = TRANSFORMS[op.name]
    if not op.signed:
        return make(op.setting(s, 1.0))
    return A.OneOf([make(op.setting(s, 1.0)), make(op.setting(s, -1.0))], p=1.0)


def rand_augment(layers: int, magnitude: float) -> A.SomeOf:
    """Build the policy; ``layers`` ops per image at strength ``magnitude`` in [0, 30]."""
    if layers < 1:
        raise ValueError(f"randaugment_layers must be >= 1 to build a policy, got {layers}")
    s = strength(magnitude)
    return A.SomeOf([_transform(op, s) for op in POLICY], n=layers, replace=True, p=1.0)
