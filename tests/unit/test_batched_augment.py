"""BatchRandAugment: op-by-op agreement with the albumentations policy it mirrors, and batch behaviour."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from albumentations_policy import TRANSFORMS, rand_augment

from datamodules.augmentation.batched_ops import (
    EXECUTORS,
    GEOMETRIC_OPS,
    OPS,
    BatchRandAugment,
    apply_layer,
)
from datamodules.augmentation.policy import OP_NAMES, POLICY, SIGNED_OPS, setting

SIZES = [(32, 32), (24, 40)]
PARAMETRIC = [name for name in OP_NAMES if name not in ("identity", "auto_contrast", "equalize")]


def _test_images(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 [8,3,H,W]: smooth random images, a gradient and noise, with a white patch and a flat channel."""
    generator = torch.Generator().manual_seed(seed)
    smooth = [
        F.interpolate(torch.rand(1, 3, 3 + i, 4 + i, generator=generator) * 255, size=(height, width), mode="bicubic")
        for i in range(6)
    ]
    ys, xs = torch.meshgrid(torch.linspace(0, 255, height), torch.linspace(0, 255, width), indexing="ij")
    gradient = torch.stack([xs, ys, 255 - xs])[None]
    noise = torch.randint(0, 256, (1, 3, height, width), generator=generator).float()
    images = torch.cat([*smooth, gradient, noise]).round().clamp(0, 255).to(torch.uint8)
    images[0, :, :3, :3] = 255  # white: AutoContrast's histogram skips it, Solarize flips it even at magnitude 0
    images[1, 1] = 77  # a flat channel: AutoContrast and Equalize leave it alone
    return images


def _signs(name: str) -> list[float]:
    return [1.0, -1.0] if name in SIGNED_OPS else [1.0]


def _albumentations_op(name: str, magnitude: float, sign: float) -> A.BasicTransform:
    """The transform rand_augment builds for ``name`` (its OneOf holds the + sign first)."""
    transform = rand_augment(1, magnitude).transforms[OP_NAMES.index(name)]
    if isinstance(transform, A.OneOf):
        transform = transform.transforms[0 if sign > 0 else 1]
    return transform


def _apply_albumentations(transform: A.BasicTransform, images: torch.Tensor) -> torch.Tensor:
    hwc = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in images]
    out = np.stack([transform(image=image)["image"] for image in hwc])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def _per_image(augment: BatchRandAugment, images: torch.Tensor, ops: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Reference for the batched path: every image through its own ops, one at a time."""
    out = []
    for i, image in enumerate(images.float()):
        image = image[None]
        for layer in range(ops.shape[0]):
            image = OPS[OP_NAMES[ops[layer, i]]](image, signs[layer, i : i + 1], augment.strength)
        out.append(image)
    return torch.cat(out)


def test_both_executors_implement_exactly_the_policy_ops() -> None:
    assert set(TRANSFORMS) == set(EXECUTORS) == set(OP_NAMES)
    assert list(OPS) == list(OP_NAMES) == [op.name for op in POLICY]


def test_signed_ops_build_both_signs_from_the_policy_setting() -> None:
    for name in SIGNED_OPS:
        plus, minus = (_albumentations_op(name, 7.0, sign) for sign in (1.0, -1.0))
        assert repr(plus) == repr(TRANSFORMS[name](setting(name, 0.7, 1.0)))
        assert repr(minus) == repr(TRANSFORMS[name](setting(name, 0.7, -1.0)))
        assert setting(name, 0.7, 1.0) != setting(name, 0.7, -1.0)


def test_op_list_is_the_cpu_policy_list() -> None:
    expected = ["NoOp", "AutoContrast", "Equalize", "Solarize", "Posterize", "Sharpen", *["Affine"] * 5]
    expected += ["ColorJitter"] * 3
    found = [type(_albumentations_op(name, 5.0, 1.0)).__name__ for name in OP_NAMES]
    assert found == expected
    assert len(rand_augment(1, 5.0).transforms) == len(OP_NAMES)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("magnitude", [0.0, 3.0, 6.25, 10.0, 15.0, 30.0])  # above 10: clamped extrapolation
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_matches_albumentations(name: str, magnitude: float, size: tuple[int, int]) -> None:
    images = _test_images(*size)
    for sign in _signs(name):
        expected = _apply_albumentations(_albumentations_op(name, magnitude, sign), images)
        got = OPS[name](images.float(), torch.full((len(images),), sign), magnitude / 10)
        diff = (got - expected).abs()
        if name in GEOMETRIC_OPS:
            # cv2.warpAffine and grid_sample compute the bilinear blend in a different order,
            # so a value landing near .5 can round the other way: one level on a few pixels.
            assert diff.max() <= 1 and diff.mean() < 0.01, (sign, diff.max(), diff.mean())
        else:  # pointwise ops, the sharpen filter and the saturation blend replicate OpenCV's rounding
            assert torch.equal(got, expected), (sign, diff.max(), (diff > 0).sum())


@pytest.mark.parametrize("name", ["auto_contrast", "equalize"])
def test_histogram_ops_match_albumentations_on_many_images(name: str) -> None:
    # Many histograms make LUT values land on .5, where float32 rounding order decides the level.
    images = torch.cat([_test_images(20, 36, seed) for seed in range(6)])
    expected = _apply_albumentations(_albumentations_op(name, 5.0, 1.0), images)
    assert torch.equal(OPS[name](images.float(), torch.ones(len(images)), 0.5), expected)


@pytest.mark.parametrize("name", PARAMETRIC)
def test_parametric_ops_are_identity_at_magnitude_zero(name: str) -> None:
    # albumentations' Solarize inverts v >= 255 even at magnitude 0 (compared above), so no white here.
    images = _test_images(24, 40).clamp(max=254).float()
    for sign in (1.0, -1.0):
        assert torch.equal(OPS[name](images, torch.full((len(images),), sign), 0.0), images)


def test_policy_restricted_to_parametric_ops_is_identity_at_magnitude_zero() -> None:
    images = _test_images(32, 32).clamp(max=254).float()
    choices = torch.tensor([OP_NAMES.index(name) for name in PARAMETRIC])
    torch.manual_seed(0)
    for _ in range(3):
        ops = choices[torch.randint(len(choices), (len(images),))]
        signs = torch.randint(0, 2, (len(images),)).float() * 2 - 1
        assert torch.equal(apply_layer(images, ops, signs, 0.0), images)


def test_batched_layers_apply_each_images_sampled_ops() -> None:
    images = torch.cat([_test_images(24, 40, seed) for seed in range(4)])
    augment = BatchRandAugment(layers=3, magnitude=7.0)
    torch.manual_seed(1)
    got = augment(images)
    torch.manual_seed(1)
    ops, signs = augment.sample(len(images))
    assert torch.equal(got.float(), _per_image(augment, images, ops, signs))


def test_ops_are_drawn_uniformly_and_sorted_per_image() -> None:
    torch.manual_seed(0)
    ops, signs = BatchRandAugment(layers=2, magnitude=5.0).sample(20000)
    frequency = torch.bincount(ops.flatten(), minlength=len(OP_NAMES)).float() / ops.numel()
    assert (frequency - 1 / len(OP_NAMES)).abs().max() < 0.01  # ~8 standard deviations
    assert signs.abs().eq(1).all() and abs(signs.mean().item()) < 0.02
    assert (ops[0] <= ops[1]).all()  # albumentations' SomeOf applies its draws in list order


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_dtype_shape_and_device_are_kept(dtype: torch.dtype) -> None:
    images = _test_images(24, 40).to(dtype)
    torch.manual_seed(0)
    out = BatchRandAugment(layers=2, magnitude=9.0, color_jitter=0.4)(images)
    assert out.dtype == dtype and out.shape == images.shape and out.device == images.device
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
    assert not torch.equal(out, images)


def test_no_layers_and_no_jitter_returns_the_input() -> None:
    images = _test_images(32, 32).float()
    assert torch.equal(BatchRandAugment(layers=0, magnitude=9.0)(images), images)


def test_color_jitter_factors_cover_their_range() -> None:
    # Flat grey images: brightness gives floor(v * factor); contrast's truncated
    # v * f + v * (1 - f) can lose one level to float error (as in albumentations); saturation keeps them.
    images = torch.full((4000, 3, 2, 2), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    out = BatchRandAugment(layers=0, magnitude=0.0, color_jitter=0.3)(images).float()
    assert out.min() >= 69 and out.max() <= 130
    assert out.min() <= 72 and out.max() >= 128
    assert len(out[:, 0, 0, 0].unique()) > 50


def test_reproducible_under_manual_seed_and_varied_across_the_batch() -> None:
    images = _test_images(24, 40)[2:3].expand(64, -1, -1, -1).contiguous()
    augment = BatchRandAugment(layers=2, magnitude=9.0, color_jitter=0.2)
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    assert torch.equal(augment(images), first)
    assert len({image.numpy().tobytes() for image in first}) > 48
    ops, _ = augment.sample(64)
    assert len(ops.t().unique(dim=0)) > 20


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"layers": -1, "magnitude": 5.0}, "layers"),
        ({"layers": 2, "magnitude": -0.5}, "magnitude"),
        ({"layers": 2, "magnitude": 30.5}, "magnitude"),
        ({"layers": 2, "magnitude": 5.0, "color_jitter": -0.1}, "color_jitter"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, float], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        BatchRandAugment(**kwargs)


# The loader workers' executor (OpenCV, one image at a time) against the albumentations reference and the batched one.
@pytest.mark.parametrize("magnitude", [0.0, 6.25, 15.0, 30.0])
@pytest.mark.parametrize("name", OP_NAMES)
def test_opencv_op_matches_albumentations_and_the_batched_op(name: str, magnitude: float) -> None:
    from datamodules.augmentation.opencv_ops import EXECUTORS as CPU_EXECUTORS

    for size in SIZES:
        images = _test_images(*size)
        for sign in _signs(name):
            reference = _apply_albumentations(_albumentations_op(name, magnitude, sign), images)
            hwc = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in images]
            got = torch.from_numpy(np.stack([CPU_EXECUTORS[name](im, magnitude / 10, sign) for im in hwc])).permute(
                0, 3, 1, 2
            )
            assert torch.equal(got.float(), reference), (name, sign, (got.float() - reference).abs().max())


@pytest.mark.parametrize("crop", ["resized", "pad"])
def test_worker_executor_draws_and_applies_as_the_batched_one(crop: str) -> None:
    """Same generator seed -> same flips, crops, ops, signs, jitter and erasing: the same image, up to the
    geometric ops' one level on a few pixels (which a later histogram or posterize op may turn into a step)."""
    from datamodules.augmentation.recipe import AugmentExecutor, PerImageAugment, TrainAugment

    recipe = TrainAugment(
        randaugment_layers=3, randaugment_magnitude=12, color_jitter=0.4, random_erasing=0.5, crop_padding=3
    )
    batched, per_image = AugmentExecutor(recipe, crop), PerImageAugment(recipe, crop)
    images = torch.cat([_test_images(24, 40, seed) for seed in range(4)])
    for i, image in enumerate(images):
        expected = batched(image[None], torch.Generator().manual_seed(i))[0]
        got = per_image(image, torch.Generator().manual_seed(i))
        changed = got != expected
        assert got.shape == expected.shape and changed.float().mean() < 0.01, (i, changed.float().mean())
    different = [
        i
        for i, image in enumerate(images)
        if not torch.equal(per_image(image, torch.Generator().manual_seed(i)), image)
    ]
    assert len(different) > len(images) // 2  # the recipe does act
