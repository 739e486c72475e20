"""Batched RandAugment (plus optional colour jitter) on image tensors, for augmenting on the GPU.

Executes the policy of ``datamodules.augmentation.policy`` (its op list and settings) on the device, as
``opencv_ops`` does per image in CPU workers. Each op repeats the arithmetic of the albumentations/OpenCV
op it stands for (rounding, truncation, histogram quirks; ``tests/albumentations_policy.py`` is the reference
it is tested against), so results match what the OpenCV-based pipeline produced. Between ops images are
float32 holding integers 0..255: exactly the uint8 values the CPU pipeline would hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from datamodules.augmentation import policy
from datamodules.augmentation.policy import GREY, OP_NAMES
from datamodules.augmentation.tensor_ops import host_to_device

# (images [N,3,H,W] float32 0..255, sign [N] of +-1, strength = magnitude / 10) -> images
Op = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
# (sign [N], strength, height, width) -> [N,3,3] float64 map from input to output pixel coordinates
MatrixOp = Callable[[torch.Tensor, float, int, int], torch.Tensor]

# cv2.cvtColor RGB2GRAY for uint8 is fixed point: 15-bit weights, round half up (bit-exact).
_GREY_WEIGHTS = (9798.0, 19235.0, 3735.0)
_GREY_ONE = 32768.0


def _saturate(images: torch.Tensor) -> torch.Tensor:
    """OpenCV's float -> uint8 cast: round half to even, then clamp."""
    return images.round().clamp_(0.0, 255.0)


def grey(images: torch.Tensor) -> torch.Tensor:
    """[N,1,H,W] luma as cv2.cvtColor computes it (every product stays exact in float32)."""
    r, g, b = images.unbind(1)
    wr, wg, wb = _GREY_WEIGHTS
    return torch.floor((r * wr + g * wg + b * wb + _GREY_ONE / 2) / _GREY_ONE).unsqueeze(1)


def _histograms(images: torch.Tensor) -> torch.Tensor:
    """Per-channel 256-bin histograms, [N*C, 256] float32 (counts are exact below 2**24)."""
    flat = images.reshape(images.shape[0] * images.shape[1], -1).long()
    hist = torch.zeros(flat.shape[0], 256, device=images.device)
    return hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=hist.dtype))


def _lookup(images: torch.Tensor, luts: torch.Tensor) -> torch.Tensor:
    """Map every channel through its own 256-entry table ([N*C, 256])."""
    flat = images.reshape(luts.shape[0], -1).long()
    return luts.gather(1, flat).view_as(images)


def _first_present(hist: torch.Tensor) -> torch.Tensor:
    """Index of the first non-empty bin per row, [N*C, 1] (0 for an empty row)."""
    return (hist > 0).float().argmax(1, keepdim=True)


def _identity(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    """A.NoOp."""
    return images


def auto_contrast(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    """A.AutoContrast(): its default "cdf" method equalises the histogram between min and max.

    Its histogram comes from cv2.calcHist over [0, 255), which never counts 255, so
    255 is left out of the bounds and the CDF (and still maps to 255).
    """
    hist = _histograms(images)
    hist[:, 255] = 0
    lo = _first_present(hist)
    hi = 255 - _first_present(hist.flip(1))
    stretch = (hist.sum(1, keepdim=True) > 0) & (hi > lo)
    cdf = hist.cumsum(1)
    cdf_lo, cdf_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    luts = ((cdf - cdf_lo) * 255 / (cdf_hi - cdf_lo).clamp_min(1)).round().clamp(0, 255)
    identity = torch.arange(256, device=images.device, dtype=luts.dtype).expand_as(luts)
    return _lookup(images, torch.where(stretch, luts, identity))


def equalize(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    """A.Equalize(): cv2.equalizeHist per channel, lut = round((cdf - cdf[first]) * 255 / (n - cdf[first]))."""
    hist = _histograms(images)
    cdf = hist.cumsum(1)
    cdf_first = cdf.gather(1, _first_present(hist))
    total = cdf[:, -1:]
    scale = torch.full_like(total, 255.0) / (total - cdf_first).clamp_min(1)  # not 255 / x: torch takes 1/x first
    luts = ((cdf - cdf_first) * scale).round().clamp(0, 255)
    identity = torch.arange(256, device=images.device, dtype=luts.dtype).expand_as(luts)
    return _lookup(images, torch.where(total == cdf_first, identity, luts))


def solarize(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    """Invert values >= threshold * 255 (albumentations' comparison; at s=0 only 255 flips, to 0)."""
    cut = math.ceil(policy.setting("solarize", strength) * 255)  # integer pixels: v >= t  <=>  v >= ceil(t)
    return torch.where(images >= cut, 255 - images, images)


def posterize(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    """Keep the policy's number of high bits."""
    step = 2 ** (8 - int(policy.setting("posterize", strength)))
    return torch.floor(images / step) * step


def sharpen(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    """A.Sharpen(alpha=enhance, lightness=1): cv2.filter2D with (1-a)*identity + a*[[-1]*3, [-1, 9, -1], [-1]*3].

    filter2D's default border is BORDER_REFLECT_101, torch's "reflect" padding.
    """
    alpha = policy.setting("sharpen", strength)
    identity = torch.zeros(3, 3, device=images.device)
    identity[1, 1] = 1.0
    effect = torch.full((3, 3), -1.0, device=images.device)
    effect[1, 1] = 9.0
    kernel = (1 - alpha) * identity + alpha * effect
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    channels = images.shape[1]
    return _saturate(F.conv2d(padded, kernel.expand(channels, 1, 3, 3), groups=channels))


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ColorJitter brightness: albucore's uint8 LUT truncates v * factor (float32)."""
    return torch.floor((images * factor.float().view(-1, 1, 1, 1)).clamp_(0.0, 255.0))


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ColorJitter contrast: truncated v * f + mean(grey) * (1 - f), the bias in float64 then float32."""
    mean = grey(images).double().mean((1, 2, 3))
    bias = (mean * (1 - factor.double())).float().view(-1, 1, 1, 1)
    return torch.floor((images * factor.float().view(-1, 1, 1, 1) + bias).clamp_(0.0, 255.0))


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ColorJitter saturation: cv2.addWeighted(image, f, grey, 1 - f, 0).

    OpenCV computes fma(v, float(f), grey * float(1 - f)) in float32, rounding once;
    float64 holds v * float(f) exactly, so it stands in for the fused multiply-add.
    """
    alpha = factor.float().double().view(-1, 1, 1, 1)
    beta = (1 - factor.double()).float().view(-1, 1, 1, 1)
    return _saturate((images.double() * alpha + grey(images) * beta).float())


def per_sign(sign: torch.Tensor, value: Callable[[float], float]) -> torch.Tensor:
    """``value(sign[i])`` per image as float64: ``value`` runs once per sign, in Python floats, so every image
    gets exactly the number the albumentations op is built with."""
    negative = torch.full_like(sign, value(-1.0), dtype=torch.float64)  # filled on the device: no host copy
    return negative.masked_fill_(sign > 0, value(1.0))


def _brightness(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    return adjust_brightness(images, per_sign(sign, lambda sg: policy.setting("brightness", strength, sg)))


def _contrast(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    return adjust_contrast(images, per_sign(sign, lambda sg: policy.setting("contrast", strength, sg)))


def _saturation(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
    return adjust_saturation(images, per_sign(sign, lambda sg: policy.setting("saturation", strength, sg)))


def _about_centre(linear: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Embed [N,2,2] linear maps in [N,3,3] matrices fixing albumentations' centre ((w-1)/2, (h-1)/2)."""
    centre = linear.new_tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64, device=linear.device).repeat(linear.shape[0], 1, 1)
    matrix[:, :2, :2] = linear
    matrix[:, :2, 2] = centre - linear @ centre
    return matrix


def _linear(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """[N,2,2] matrices [[a, b], [c, d]] from [N] entries."""
    return torch.stack([a, b, c, d], 1).view(-1, 2, 2)


def rotate_matrix(sign: torch.Tensor, strength: float, height: int, width: int) -> torch.Tensor:
    """Albumentations' rotation by the policy's signed angle: [[cos, sin], [-sin, cos]]."""

    def angle(sg: float) -> float:
        return math.radians(policy.setting("rotate", strength, sg))

    cos = per_sign(sign, lambda sg: math.cos(angle(sg)))
    sin = per_sign(sign, lambda sg: math.sin(angle(sg)))
    return _about_centre(_linear(cos, sin, -sin, cos), height, width)


def _negated_shear_tan(name: str, sign: torch.Tensor, strength: float) -> torch.Tensor:
    """Albumentations negates the sampled shear angle."""
    return per_sign(sign, lambda sg: -math.tan(math.radians(policy.setting(name, strength, sg))))


def shear_x_matrix(sign: torch.Tensor, strength: float, height: int, width: int) -> torch.Tensor:
    """x' = x - tan(angle) * y."""
    one, zero = torch.ones_like(sign.double()), torch.zeros_like(sign.double())
    return _about_centre(_linear(one, _negated_shear_tan("shear_x", sign, strength), zero, one), height, width)


def shear_y_matrix(sign: torch.Tensor, strength: float, height: int, width: int) -> torch.Tensor:
    """y' = y - tan(angle) * x."""
    one, zero = torch.ones_like(sign.double()), torch.zeros_like(sign.double())
    return _about_centre(_linear(one, zero, _negated_shear_tan("shear_y", sign, strength), one), height, width)


def _translate(name: str, sign: torch.Tensor, strength: float, side: int, axis: int) -> torch.Tensor:
    """Shift by int(fraction * side) pixels: albumentations truncates to whole pixels."""
    matrix = torch.eye(3, dtype=torch.float64, device=sign.device).repeat(sign.shape[0], 1, 1)
    matrix[:, axis, 2] = per_sign(sign, lambda sg: int(policy.setting(name, strength, sg) * side))
    return matrix


def translate_x_matrix(sign: torch.Tensor, strength: float, height: int, width: int) -> torch.Tensor:
    return _translate("translate_x", sign, strength, width, 0)


def translate_y_matrix(sign: torch.Tensor, strength: float, height: int, width: int) -> torch.Tensor:
    return _translate("translate_y", sign, strength, height, 1)


def warp(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample through per-image [N,3,3] output->input pixel maps like cv2.warpAffine.

    Bilinear, GREY outside: sampling ``images - GREY`` with zero padding and adding
    GREY back blends border taps with GREY exactly as BORDER_CONSTANT does. The maps are
    turned into grid_sample's form where they live (the host, in ``apply_layer``) and only
    the result is copied to the images' device, without waiting for it.
    """
    _, _, height, width = images.shape
    # grid_sample's align_corners=False coordinates: -1 and 1 are the outer edges of the edge pixels.
    to_pixel = inverse.new_tensor([[width / 2, 0, (width - 1) / 2], [0, height / 2, (height - 1) / 2], [0, 0, 1]])
    to_normal = inverse.new_tensor([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])
    theta = host_to_device((to_normal @ inverse @ to_pixel)[:, :2].float(), images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = F.grid_sample(images - GREY, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _saturate(shifted + GREY)


# The forward map of each of these ops with the opposite sign is its inverse.
GEOMETRIC_OPS: dict[str, MatrixOp] = {
    "rotate": rotate_matrix,
    "shear_x": shear_x_matrix,
    "shear_y": shear_y_matrix,
    "translate_x": translate_x_matrix,
    "translate_y": translate_y_matrix,
}


def _geometric(matrix: MatrixOp) -> Op:
    """A single geometric op as an Op (for calling one at a time; the policy batches them)."""

    def apply(images: torch.Tensor, sign: torch.Tensor, strength: float) -> torch.Tensor:
        return warp(images, matrix(-sign, strength, images.shape[2], images.shape[3]))

    return apply


EXECUTORS: dict[str, Op] = {
    "identity": _identity,
    "auto_contrast": auto_contrast,
    "equalize": equalize,
    "solarize": solarize,
    "posterize": posterize,
    "sharpen": sharpen,
    **{name: _geometric(matrix) for name, matrix in GEOMETRIC_OPS.items()},
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
}
# In the policy's order (op indices drawn by ``BatchRandAugment.sample`` index it).
OPS: dict[str, Op] = {name: EXECUTORS[name] for name in OP_NAMES}
# Ops that change values, not positions, each run on its own subset (identity needs no run).
_VALUE_OPS = tuple(
    (index, OPS[name]) for index, name in enumerate(OP_NAMES) if name not in GEOMETRIC_OPS and name != "identity"
)
_GEOMETRIC_INDEX = tuple(OP_NAMES.index(name) for name in GEOMETRIC_OPS)


def _warp_geometric(images: torch.Tensor, ops: torch.Tensor, signs: torch.Tensor, strength: float) -> torch.Tensor:
    """One grid_sample for every image whose op is geometric, each with its own matrix (built on the host)."""
    _, _, height, width = images.shape
    kinds = torch.full((len(OP_NAMES),), -1, dtype=torch.long)
    kinds[list(_GEOMETRIC_INDEX)] = torch.arange(len(_GEOMETRIC_INDEX))
    kind = kinds[ops]
    inverses = torch.stack([matrix(-signs, strength, height, width) for matrix in GEOMETRIC_OPS.values()])
    return warp(images, inverses[kind, torch.arange(len(kind))])


def apply_layer(images: torch.Tensor, ops: torch.Tensor, signs: torch.Tensor, strength: float) -> torch.Tensor:
    """Apply op ``ops[i]`` (index into OP_NAMES) with sign ``signs[i]`` to image i.

    Each op runs once on the images that drew it. ``ops`` and ``signs`` live on the host, so
    choosing the subsets never waits for the device: a CUDA batch is augmented without a sync.
    """
    ops, signs = ops.cpu(), signs.cpu()
    device = images.device
    out = images.clone()
    for index, op in _VALUE_OPS:
        chosen = (ops == index).nonzero().squeeze(1)
        if chosen.numel():
            rows = host_to_device(chosen, device)
            out[rows] = op(images[rows], host_to_device(signs[chosen], device), strength)
    chosen = torch.isin(ops, torch.tensor(_GEOMETRIC_INDEX)).nonzero().squeeze(1)
    if chosen.numel():
        rows = host_to_device(chosen, device)
        out[rows] = _warp_geometric(images[rows], ops[chosen], signs[chosen], strength)
    return out


class BatchRandAugment:
    """The RandAugment policy of ``datamodules.augmentation.policy`` for whole [B,3,H,W] batches on any device.

    Each image gets ``layers`` ops drawn uniformly with replacement from OP_NAMES at
    strength ``magnitude`` (0..30, see ``policy``), signed ops with a random sign. Then, with
    ``color_jitter`` j > 0, brightness, contrast and saturation factors drawn
    uniformly from [max(0, 1 - j), 1 + j] per image, applied in that fixed order
    (albumentations' ColorJitter shuffles the order). Ops and signs come from torch's
    global CPU RNG, jitter factors from the images' device RNG, so torch.manual_seed
    reproduces them.
    """

    def __init__(self, layers: int, magnitude: float, color_jitter: float = 0.0) -> None:
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        strength = policy.strength(magnitude)
        if color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
        self.layers = layers
        self.strength = strength
        self.color_jitter = color_jitter

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Op indices and signs (+-1), both [layers, batch], drawn on the host (see ``apply_layer``).

        Each image's ops are sorted, as albumentations' SomeOf applies its draws in list order.
        """
        ops = torch.randint(len(OP_NAMES), (self.layers, batch), generator=generator).sort(0).values
        signs = torch.randint(0, 2, (self.layers, batch), generator=generator).float() * 2 - 1
        return ops, signs

    def jitter_factors(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Brightness, contrast and saturation factors, [3, batch] float64, uniform in [max(0, 1 - j), 1 + j]."""
        low, high = max(0.0, 1.0 - self.color_jitter), 1.0 + self.color_jitter
        return low + (high - low) * torch.rand(3, batch, device=device, dtype=torch.float64, generator=generator)

    def jitter(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Colour jitter with per-image factors (brightness, then contrast, then saturation)."""
        factors = self.jitter_factors(images.shape[0], images.device, generator)
        for adjust, factor in zip((adjust_brightness, adjust_contrast, adjust_saturation), factors):
            images = adjust(images, factor)
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment uint8 or float (0..255) images; same dtype, shape and device, integer values.

        ``generator`` (a CPU one, for CPU images) replaces the global streams: loader workers pass one seeded per
        sample, so their draws depend on nothing else."""
        if self.layers == 0 and self.color_jitter == 0:
            return images
        out = _saturate(images.float())
        ops, signs = self.sample(images.shape[0], generator)
        for layer_ops, layer_signs in zip(ops, signs):
            out = apply_layer(out, layer_ops, layer_signs, self.strength)
        if self.color_jitter > 0:
            out = self.jitter(out, generator)
        return out.to(images.dtype)
