"""Relative attention against the paper's formula, and relative-position table resizing."""

from __future__ import annotations

import pytest
import torch

from coatnet import create_model, relative_position_index, resize_table
from coatnet.blocks import RelativeAttention


def naive_relative_attention(attn: RelativeAttention, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """CoAtNet eq. 3 written out with explicit loops over queries i and keys j."""
    height, width = grid
    batch, tokens, _ = x.shape
    heads, dim = attn.heads, attn.head_dim
    qkv = attn.qkv(x).view(batch, tokens, 3, heads, dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, dim)
    table = attn.rel_pos.bias_table()  # ((2H-1)(2W-1), heads)
    out = torch.zeros(batch, tokens, heads, dim, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            for i in range(tokens):
                yi, xi = divmod(i, width)
                logits = torch.zeros(tokens, dtype=x.dtype)
                w = torch.zeros(tokens, dtype=x.dtype)
                for j in range(tokens):
                    yj, xj = divmod(j, width)
                    row = (yi - yj + height - 1) * (2 * width - 1) + (xi - xj + width - 1)
                    w[j] = table[row, h]
                    logits[j] = q[b, i, h] @ k[b, j, h] / dim**0.5
                if attn.pre_softmax:
                    weights = torch.softmax(logits + w, dim=0)
                else:
                    weights = torch.softmax(logits, dim=0) + w
                out[b, i, h] = weights @ v[b, :, h]
    return attn.proj(out.reshape(batch, tokens, heads * dim))


@pytest.mark.parametrize("form", ["pre_softmax", "post_softmax"])
@pytest.mark.parametrize("grid", [(3, 3), (2, 4)])
def test_matches_naive_double_loop(form, grid):
    torch.manual_seed(0)
    attn = RelativeAttention(16, 32, 24, head_dim=16, grid=grid, form=form).double()
    with torch.no_grad():
        attn.rel_pos.table.normal_(std=1.0)  # large bias so a wrong index would show
    x = torch.randn(2, grid[0] * grid[1], 16, dtype=torch.float64)
    expected = naive_relative_attention(attn, x, grid)
    torch.testing.assert_close(attn(x), expected, rtol=1e-9, atol=1e-9)


def test_pre_and_post_softmax_differ():
    torch.manual_seed(0)
    pre = RelativeAttention(16, 32, 16, 16, (3, 3), form="pre_softmax")
    post = RelativeAttention(16, 32, 16, 16, (3, 3), form="post_softmax")
    post.load_state_dict(pre.state_dict())
    with torch.no_grad():
        pre.rel_pos.table.normal_(std=1.0)
        post.rel_pos.table.copy_(pre.rel_pos.table)
    x = torch.randn(1, 9, 16)
    assert not torch.allclose(pre(x), post(x), atol=1e-3)


def test_relative_index_is_translation_invariant():
    index = relative_position_index(3, 4).view(12, 12)
    assert index.max().item() == 5 * 7 - 1 and index.min().item() == 0
    # tokens (0,0)->(1,1) and (1,2)->(2,3) have the same offset, hence the same table row
    assert index[0 * 4 + 0, 1 * 4 + 1] == index[1 * 4 + 2, 2 * 4 + 3]
    assert (index.diagonal() == index[0, 0]).all()


def test_unknown_form_is_rejected():
    with pytest.raises(ValueError, match="pre_softmax"):
        RelativeAttention(8, 8, 8, 8, (2, 2), form="softmax_plus")


def test_resize_same_size_is_exact():
    model = create_model("coatnet_nano", img_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_img_size(64)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_resize_224_to_384_for_fine_tuning():
    model = create_model("coatnet_0").eval()
    block = model.stages[2][1]
    old = block.attn.rel_pos.table.detach().clone()
    model.set_img_size(384)
    assert model.config.img_size == (384, 384)
    assert block.attn.rel_pos.table.shape == ((2 * 24 - 1) ** 2, 12)
    assert model.stages[3][0].attn.rel_pos.table.shape == ((2 * 12 - 1) ** 2, 24)
    new = block.attn.rel_pos.table.detach()
    # offset 0 sits at the centre of both grids and extreme offsets map onto each other
    assert torch.allclose(new.view(47, 47, 12)[23, 23], old.view(27, 27, 12)[13, 13])
    assert torch.allclose(new.view(47, 47, 12)[0, 0], old.view(27, 27, 12)[0, 0])
    with torch.device("meta"):
        out = model.to("meta")(torch.empty(1, 3, 384, 384))
    assert out.shape == (1, 1000)


def test_resized_table_is_smooth_interpolation():
    table = torch.arange(5 * 5, dtype=torch.float32).view(25, 1)  # a linear ramp over (dy, dx)
    resized = resize_table(table, (3, 3), (5, 5)).view(9, 9)
    ramp_rows = resized[:, 4]
    assert torch.all(ramp_rows[1:] >= ramp_rows[:-1])  # monotone like the source
    assert resized[0, 0].item() == pytest.approx(0.0, abs=1e-4) and resized[-1, -1].item() == pytest.approx(
        24.0, abs=1e-4
    )
    with pytest.raises(ValueError, match="rows"):
        resize_table(table, (4, 4), (5, 5))


def test_rel_pos_mlp_resizes_without_interpolation():
    model = create_model("coatnet_rmlp_nano_rw", img_size=64, num_classes=2).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_img_size(128)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model(torch.randn(1, 3, 128, 128)).shape == (1, 2)
