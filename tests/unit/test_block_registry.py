"""A block type is one registered class: validation, building, resizing, recomputation and FSDP read ``BLOCKS``.

The toy block below is what a researcher would write for a new layout letter; nothing else in the
package is touched, and a layout using it validates, trains, resizes and recomputes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import registered_block, small_layout_model
from torch import nn

from coatnet import create_model, get_config
from coatnet.blocks import BLOCKS, Block, MBConvBlock, TransformerBlock, register_block
from coatnet.config import CoAtNetConfig


class TokenMlpBlock(Block):
    """A channels-last residual MLP that pools to downsample: the smallest block with a grid to follow."""

    tokens_last = True

    def __init__(
        self, dim_in: int, dim_out: int, stride: int, grid: tuple[int, int], config: CoAtNetConfig, drop_path: float
    ) -> None:
        super().__init__(dim_in, dim_out, stride, grid, config, drop_path)
        self.stride, self.grid = stride, grid
        self.norm = nn.LayerNorm(dim_in)
        self.mlp = nn.Sequential(nn.Linear(dim_in, 2 * dim_out), nn.GELU(), nn.Linear(2 * dim_out, dim_out))
        self.shortcut = nn.Linear(dim_in, dim_out) if dim_in != dim_out else nn.Identity()

    @classmethod
    def check_stage(cls, config: CoAtNetConfig, index: int) -> None:
        if config.widths[index] % 8:
            raise ValueError(f"TokenMlpBlock width {config.widths[index]} is not a multiple of 8")

    def set_grid(self, grid: tuple[int, int]) -> None:
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) tokens, as ``tokens_last`` asks the stage for."""
        if self.stride > 1:
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.stride).permute(0, 2, 3, 1)
        if tuple(x.shape[1:3]) != self.grid:
            raise AssertionError(f"block runs on a {tuple(x.shape[1:3])} grid but was told {self.grid}")
        return self.shortcut(x) + self.mlp(self.norm(x))


@pytest.fixture
def toy_letter():
    """The toy block is layout letter M for one test only."""
    with registered_block("M", TokenMlpBlock) as letter:
        yield letter


def test_the_built_in_letters_are_the_table():
    assert BLOCKS["C"] is MBConvBlock and BLOCKS["T"] is TransformerBlock
    assert all(issubclass(block, Block) and block.letter == letter for letter, block in BLOCKS.items())
    assert (MBConvBlock.tokens_last, TransformerBlock.tokens_last) == (False, True)


def test_a_registered_block_trains_in_a_layout(toy_letter):
    torch.manual_seed(0)
    model = small_layout_model("CMTM")
    assert [type(stage[0]) for stage in model.stages] == [MBConvBlock, TokenMlpBlock, TransformerBlock, TokenMlpBlock]
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 4
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.stages[1].parameters()), "the new block is trained"
    assert losses[-1] < 0.75 * losses[0], [round(v, 3) for v in losses]


def test_a_registered_block_follows_set_img_size_and_recomputes(toy_letter):
    model = create_model("coatnet_nano", layout="CCMM", img_size=32, num_classes=3)
    model.set_img_size(64)
    assert {block.grid for block in model.stages[3]} == {(2, 2)}
    model.set_grad_checkpointing([2])
    calls = []
    model.stages[2][0].register_forward_pre_hook(lambda *_: calls.append(1))
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(calls) == 2, "a recomputed block runs again in backward"


def test_config_validation_reads_the_table(toy_letter):
    assert get_config("coatnet_nano", layout="CMTM").layout == "CMTM"
    with pytest.raises(ValueError, match=r"TokenMlpBlock width 36 is not a multiple of 8"):
        get_config("coatnet_nano", layout="CMTM", widths=(32, 36, 128, 256))
    with pytest.raises(ValueError, match=r"unknown letter\(s\) X: the layout letters are C \(MBConvBlock\), "
                                         r"M \(TokenMlpBlock\), T \(TransformerBlock\); add one with "
                                         r"coatnet.blocks.register_block"):  # fmt: skip
        get_config("coatnet_nano", layout="CMXT")


def test_registering_refuses_a_taken_letter_or_a_non_block(toy_letter):
    with pytest.raises(ValueError, match="layout letter 'C' is already MBConvBlock"):
        register_block("C")(TokenMlpBlock)
    with pytest.raises(TypeError, match="subclass of coatnet.blocks.Block"):
        register_block("Q")(nn.Identity)
    with pytest.raises(ValueError, match="one letter"):
        register_block("CT")
    assert "Q" not in BLOCKS and BLOCKS["C"] is MBConvBlock
