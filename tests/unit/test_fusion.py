"""BatchNorm folding for inference: same logits, fewer layers, the trained model untouched."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import registered_block, small_layout_model, trained_looking
from torch import nn

from coatnet import create_model, fold_batchnorm
from coatnet.blocks import Block
from coatnet.fusion import FOLD_RULES, fold_after, register_fold


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# (overrides, BatchNorms that must stay unfolded in coatnet_nano: depths (1, 2, 2, 1), layout C-C-T-T)
CASES = {
    "paper (stride at dw)": ({}, 0),
    "stride at 1x1": ({"conv": {"stride_at": "1x1"}}, 0),
    "stride at an avg pool": ({"conv": {"stride_at": "pool"}}, 0),
    "3x3 avg pool": ({"pool": "avg", "conv": {"stride_at": "pool"}}, 0),
    # a max pool does not commute with a negative scale: the two downsampling pre-norms stay
    "max pool before the 1x1": ({"pool": "max2", "conv": {"stride_at": "pool"}}, 2),
    # the activation after the pre-norm keeps the pre-norms of all three MBConv blocks
    "activation after the pre-norm (timm _rw)": ({"conv": {"pre_norm_act": True}}, 3),
    # squeeze-excite between the depthwise conv and its norm keeps norm2 in all three
    "early squeeze-excite (timm _rw)": ({"conv": {"se_early": True}}, 3),
    "batchnorm in the Transformer blocks": ({"transformer": {"norm": "batchnorm"}, "head": {"kind": "pool"}}, 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_model_gives_the_same_logits(case):
    overrides, unfolded = CASES[case]
    torch.manual_seed(0)
    model = trained_looking(create_model("coatnet_nano", img_size=32, num_classes=10, **overrides)).eval()
    folded = fold_batchnorm(model)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, actual = model(images), folded(images)
    assert batchnorms(folded) == unfolded
    assert batchnorms(folded) < batchnorms(model)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected, torch.zeros_like(expected))


def test_original_model_is_left_as_it_was():
    model = trained_looking(create_model("coatnet_nano", img_size=32, num_classes=10)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert model.training and not folded.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in folded.parameters())


def test_folded_model_matches_under_channels_last_and_bf16_autocast():
    model = trained_looking(create_model("coatnet_nano", img_size=32, num_classes=10)).eval()
    model = model.to(memory_format=torch.channels_last)
    folded = fold_batchnorm(model)
    assert folded.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = model(images).float(), folded(images).float()
    torch.testing.assert_close(actual, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_batchnorm_without_running_statistics_is_refused():
    model = create_model("coatnet_nano", img_size=32, num_classes=10)
    model.stem.norm1 = nn.BatchNorm2d(model.stem.norm1.num_features, track_running_stats=False)
    with pytest.raises(ValueError, match="no running statistics"):
        fold_batchnorm(model)


class ConvNormBlock(Block):
    """A new block type with a BatchNorm of its own: x + norm(conv(x)), downsampling by average pooling."""

    def __init__(self, dim_in, dim_out, stride, grid, config, drop_path) -> None:
        super().__init__(dim_in, dim_out, stride, grid, config, drop_path)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.shortcut = nn.Conv2d(dim_in, dim_out, 1)
        self.conv, self.norm = nn.Conv2d(dim_out, dim_out, 3, padding=1), nn.BatchNorm2d(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(self.pool(x))
        return x + self.norm(self.conv(x))


@pytest.fixture
def conv_norm_letter():
    """Layout letter N, and any folding rule registered for it, for one test (both tables are process-wide)."""
    with registered_block("N", ConvNormBlock) as letter:
        yield letter
    FOLD_RULES.pop(ConvNormBlock, None)


def test_a_new_block_is_left_unfolded_with_a_warning_until_it_registers_a_rule(conv_norm_letter):
    torch.manual_seed(0)
    model = small_layout_model("CNTT")
    model = trained_looking(model).eval()
    images = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match=r"no rule for ConvNormBlock: its BatchNorms stay.*register_fold"):
        folded = fold_batchnorm(model)
    assert batchnorms(folded) == 2  # the two ConvNormBlocks', the MBConv and stem ones folded
    register_fold(ConvNormBlock)(
        lambda block: (fold_after(block.conv, block.norm), setattr(block, "norm", nn.Identity()))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded = fold_batchnorm(model)
    assert batchnorms(folded) == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-4)
