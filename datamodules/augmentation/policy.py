"""The RandAugment-style policy, written once: its ops in order, which take a random sign, and each op's
setting at a given strength.

Two executors run it: ``batched_ops`` (whole batches, any device) and ``opencv_ops`` (one image, CPU
workers); ``tests/albumentations_policy.py`` builds the same policy from albumentations ops as the tests'
reference. All read the op list and every setting from here, so they cannot drift apart. A new op is one
``PolicyOp`` here plus its function in both executors (and in the reference).

Each op reaches its reference strength at magnitude 10 (strength s = magnitude / 10 = 1); larger
magnitudes (up to 30) extrapolate linearly, as in the TensorFlow RandAugment behind the paper's
magnitude 15, with each setting clamped to its valid range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MAX_MAGNITUDE = 10.0  # the magnitude at which each op has its reference strength below
MAGNITUDE_LIMIT = 30.0
GREY = 128  # fill value of geometric ops
# Strength of each op at magnitude 10.
MAX_ROTATE_DEG = 30.0
MAX_SHEAR_DEG = 17.0
MAX_TRANSLATE = 0.3  # fraction of the side
MAX_ENHANCE = 0.9  # brightness/contrast/saturation factor offset from 1; also the sharpen blend
MAX_POSTERIZE_DROP = 4  # bits removed
MIN_ENHANCE_FACTOR = 0.1  # brightness/contrast/saturation never drop below 10% (as timm clamps)

# (strength, sign +-1) -> the op's setting; unsigned ops ignore the sign
Setting = Callable[[float, float], float]


def check_magnitude(magnitude: float) -> None:
    if not 0.0 <= magnitude <= MAGNITUDE_LIMIT:
        raise ValueError(
            f"randaugment_magnitude must be in [0, {MAGNITUDE_LIMIT:g}] (10 = each op's reference strength), "
            f"got {magnitude}"
        )


def strength(magnitude: float) -> float:
    """The strength s both executors scale every op by (1 at magnitude 10)."""
    check_magnitude(magnitude)
    return magnitude / MAX_MAGNITUDE


def _no_setting(s: float, sign: float) -> float:
    return 0.0


def enhance_factor(s: float, sign: float) -> float:
    """Brightness/contrast/saturation factor 1 +- 0.9 s, at least MIN_ENHANCE_FACTOR."""
    return max(MIN_ENHANCE_FACTOR, 1.0 + sign * MAX_ENHANCE * s)


def solarize_threshold(s: float, sign: float) -> float:
    """Fraction of 255 at and above which pixels invert."""
    return max(0.0, 1.0 - s)


def posterize_bits(s: float, sign: float) -> float:
    """Bits kept per channel (a whole number)."""
    return max(1, 8 - round(MAX_POSTERIZE_DROP * s))


def sharpen_alpha(s: float, sign: float) -> float:
    return min(1.0, MAX_ENHANCE * s)


def rotate_degrees(s: float, sign: float) -> float:
    return sign * MAX_ROTATE_DEG * s


def shear_degrees(s: float, sign: float) -> float:
    return sign * MAX_SHEAR_DEG * s


def translate_fraction(s: float, sign: float) -> float:
    """Shift as a fraction of the side (executors truncate it to whole pixels)."""
    return sign * MAX_TRANSLATE * s


@dataclass(frozen=True)
class PolicyOp:
    name: str
    signed: bool  # drawn with a random sign, each sign equally likely
    setting: Setting


# In this order: albumentations' SomeOf applies an image's draws in list order, and the batched path sorts its draws.
POLICY: tuple[PolicyOp, ...] = (
    PolicyOp("identity", False, _no_setting),
    PolicyOp("auto_contrast", False, _no_setting),
    PolicyOp("equalize", False, _no_setting),
    PolicyOp("solarize", False, solarize_threshold),
    PolicyOp("posterize", False, posterize_bits),
    PolicyOp("sharpen", False, sharpen_alpha),
    PolicyOp("rotate", True, rotate_degrees),
    PolicyOp("shear_x", True, shear_degrees),
    PolicyOp("shear_y", True, shear_degrees),
    PolicyOp("translate_x", True, translate_fraction),
    PolicyOp("translate_y", True, translate_fraction),
    PolicyOp("brightness", True, enhance_factor),
    PolicyOp("contrast", True, enhance_factor),
    PolicyOp("saturation", True, enhance_factor),
)
OP_NAMES = tuple(op.name for op in POLICY)
SIGNED_OPS = frozenset(op.name for op in POLICY if op.signed)
_BY_NAME = {op.name: op for op in POLICY}


def setting(name: str, s: float, sign: float = 1.0) -> float:
    """Op ``name``'s setting at strength ``s`` with ``sign`` (+-1)."""
    return _BY_NAME[name].setting(s, sign)
