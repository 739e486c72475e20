"""The fast paths the benchmark times compute what the plain reference paths compute.

bf16 autocast against fp32, ``scaled_dot_product_attention`` with a dense bias against an
explicit matmul-softmax, and channels-last against contiguous memory, each for the forward
pass and for the gradients that training uses.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext

import pytest
import torch
import torch.nn.functional as F

from coatnet import create_model
from coatnet.blocks import RelativeAttention

BF16_LOGITS_TOLERANCE = 0.02  # relative norm error; measured about 0.7% here
BF16_GRAD_TOLERANCE = 0.05  # measured up to about 3.3% on the tables and depthwise kernels


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def logits_and_grads(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, context: AbstractContextManager
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with context:
        logits = model(images)
    F.cross_entropy(logits.float(), labels).backward()
    return logits.detach().float(), {name: p.grad.clone() for name, p in model.named_parameters()}


def small_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 64, 64, generator=generator), torch.randint(0, 10, (4,), generator=generator)


def test_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = create_model("coatnet_nano", img_size=64, num_classes=10)
    images, labels = small_batch()
    ref_logits, ref_grads = logits_and_grads(model, images, labels, nullcontext())
    logits, grads = logits_and_grads(model, images, labels, torch.autocast("cpu", dtype=torch.bfloat16))
    assert relative_error(logits, ref_logits) < BF16_LOGITS_TOLERANCE
    checked = [n for n in ref_grads if ".rel_pos." in n or n.endswith("conv_dw.weight") or n.startswith("stem.conv")]
    assert any(".rel_pos." in n for n in checked)
    errors = {n: relative_error(grads[n], ref_grads[n]) for n in checked}
    assert max(errors.values()) < BF16_GRAD_TOLERANCE, errors


def explicit_relative_attention(attn: RelativeAttention, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Eq. 3 with materialised scores: q.k / sqrt(d), the gathered bias, softmax, then the values."""
    batch, tokens, _ = x.shape
    q, k, v = attn.qkv(x).view(batch, tokens, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    rows = (ys[:, None] - ys[None, :] + grid[0] - 1) * (2 * grid[1] - 1) + (xs[:, None] - xs[None, :] + grid[1] - 1)
    bias = attn.rel_pos.table[rows].permute(2, 0, 1)  # (heads, N, N)
    scores = q @ k.transpose(-2, -1) / attn.head_dim**0.5
    weights = (scores + bias).softmax(-1) if attn.pre_softmax else scores.softmax(-1) + bias
    return attn.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, -1))


def attention_and_input(form: str, grid: tuple[int, int]) -> tuple[RelativeAttention, torch.Tensor]:
    torch.manual_seed(0)
    attn = RelativeAttention(24, 32, 24, head_dim=16, grid=grid, form=form)
    with torch.no_grad():
        attn.rel_pos.table.normal_(std=1.0)  # a bias as large as the scores, so mistakes show
    return attn, torch.randn(3, grid[0] * grid[1], 24)


def attention_grads(attn: RelativeAttention, out: torch.Tensor) -> dict[str, torch.Tensor]:
    attn.zero_grad(set_to_none=True)
    out.float().square().mean().backward()
    return {"table": attn.rel_pos.table.grad.clone(), "qkv": attn.qkv.weight.grad.clone()}


@pytest.mark.parametrize("form", ["pre_softmax", "post_softmax"])
def test_sdpa_matches_explicit_attention_fp32(form):
    grid = (3, 4)
    attn, x = attention_and_input(form, grid)
    fast = attn(x)
    fast_grads = attention_grads(attn, fast)
    reference = explicit_relative_attention(attn, x, grid)
    reference_grads = attention_grads(attn, reference)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sdpa_under_bf16_autocast_matches_fp32_reference():
    grid = (4, 4)
    attn, x = attention_and_input("pre_softmax", grid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = attn(x)
    fast_grads = attention_grads(attn, fast)
    reference = explicit_relative_attention(attn, x, grid)
    reference_grads = attention_grads(attn, reference)
    assert relative_error(fast, reference) < BF16_LOGITS_TOLERANCE
    for name, grad in fast_grads.items():
        assert relative_error(grad, reference_grads[name]) < BF16_GRAD_TOLERANCE, name


def test_channels_last_matches_contiguous_forward_and_backward():
    torch.manual_seed(0)
    model = create_model("coatnet_nano", img_size=64, num_classes=10)
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images, labels = small_batch()
    ref_logits, ref_grads = logits_and_grads(model, images, labels, nullcontext())
    fast_images = images.contiguous(memory_format=torch.channels_last)
    logits, grads = logits_and_grads(fast_model, fast_images, labels, nullcontext())
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    # absolute slack: some norm biases have an analytically zero gradient (float noise of ~1e-8)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)
