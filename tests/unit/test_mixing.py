"""Mixup / CutMix: soft targets, the CutMix area correction and the mode switching."""

import inspect

import pytest
import torch

from lightning_modules.classifier import ImageClassifier
from lightning_modules.mixing import MixupCutmix, random_box, smooth_one_hot


def _constant_batch(batch: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i, so every pixel tells which source image it came from."""
    images = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, size, size).clone()
    return images, torch.arange(batch) % 4


def test_smooth_one_hot_rows_sum_to_one():
    targets = smooth_one_hot(torch.tensor([0, 3, 2]), num_classes=5, smoothing=0.1)
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert targets[0, 0] == pytest.approx(0.9 + 0.02)
    assert targets[0, 1] == pytest.approx(0.02)


@pytest.mark.parametrize("mode_kwargs", [{"mixup_alpha": 0.8}, {"cutmix_alpha": 1.0}])
def test_soft_targets_sum_to_one_and_match_lam(mode_kwargs):
    torch.manual_seed(0)
    images, labels = _constant_batch()
    mixer = MixupCutmix(num_classes=4, label_smoothing=0.1, **mode_kwargs)
    for _ in range(20):
        out = mixer(images, labels)
        assert out.mode != "none"
        assert torch.allclose(out.targets.sum(1), torch.ones(len(labels)))
        expected = smooth_one_hot(labels, 4, 0.1) * out.lam + smooth_one_hot(labels[out.permutation], 4, 0.1) * (
            1 - out.lam
        )
        assert torch.allclose(out.targets, expected)
    assert torch.equal(images, _constant_batch()[0]), "inputs must not be modified"


def test_cutmix_lam_is_the_kept_pixel_fraction():
    torch.manual_seed(1)
    images, labels = _constant_batch(size=15)  # odd size: boxes get clipped unevenly at borders
    mixer = MixupCutmix(num_classes=4, cutmix_alpha=1.0)
    for _ in range(50):
        out = mixer(images, labels)
        own = (out.images == images).all(dim=1)  # [B, H, W]: pixel still from its own image
        pasted = (out.images == images[out.permutation]).all(dim=1)
        self_paired = out.permutation == torch.arange(len(labels))
        kept = own[~self_paired].float().mean(dim=(1, 2))
        assert torch.allclose(kept, torch.full_like(kept, out.lam)), "lam must equal the kept area"
        assert (own | pasted).all()


def test_random_box_is_clipped_to_the_image():
    torch.manual_seed(2)
    for _ in range(100):
        top, bottom, left, right = random_box(10, 12, lam=0.1)
        assert 0 <= top <= bottom <= 10 and 0 <= left <= right <= 12


def test_mixup_is_a_convex_combination():
    torch.manual_seed(3)
    images, labels = _constant_batch()
    out = MixupCutmix(num_classes=4, mixup_alpha=0.8)(images, labels)
    expected = images * out.lam + images[out.permutation] * (1 - out.lam)
    assert torch.allclose(out.images, expected)


def test_mix_prob_and_switch_prob_select_modes():
    torch.manual_seed(4)
    images, labels = _constant_batch()
    assert MixupCutmix(4, mixup_alpha=1.0, mix_prob=0.0)(images, labels).mode == "none"
    mixer = MixupCutmix(4, mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.5, switch_prob=0.5)
    modes = [mixer(images, labels).mode for _ in range(400)]
    counts = {m: modes.count(m) for m in ("none", "mixup", "cutmix")}
    assert 150 < counts["none"] < 250
    assert 60 < counts["mixup"] < 140 and 60 < counts["cutmix"] < 140
    always_cutmix = MixupCutmix(4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
    assert {always_cutmix(images, labels).mode for _ in range(20)} == {"cutmix"}


def test_unmixed_targets_are_smoothed_labels():
    images, labels = _constant_batch()
    out = MixupCutmix(num_classes=4, label_smoothing=0.2)(images, labels)
    assert out.mode == "none" and out.images is images
    assert torch.allclose(out.targets, smooth_one_hot(labels, 4, 0.2))


def test_invalid_settings_raise_once_naming_the_argument_and_its_range():
    """Checked by ImageClassifier's argument types alone (MixupCutmix repeated the check in other words)."""
    with pytest.raises(ValueError, match=r"^mixup_alpha=-1.0 is out of range: allowed >= 0$"):
        ImageClassifier(model_name="coatnet_nano", num_classes=4, image_size=(32, 32), mixup_alpha=-1.0)
    with pytest.raises(ValueError, match=r"^mix_prob=1.5 is out of range: allowed \[0, 1\]$"):
        ImageClassifier(model_name="coatnet_nano", num_classes=4, image_size=(32, 32), mix_prob=1.5)
    assert "raise" not in inspect.getsource(MixupCutmix)  # a dataclass: its generated __init__ only assigns
