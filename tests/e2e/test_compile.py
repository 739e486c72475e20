"""torch.compile trains the model with the same numbers as eager (timm's CoAtNet fails here)."""

from __future__ import annotations

import copy

import pytest
import torch

from coatnet import create_model


def tiny_model() -> torch.nn.Module:
    """One MBConv stage and one Transformer stage: both block types, few kernels to compile on 2 cores."""
    return create_model(
        "coatnet_nano",
        depths=(1, 2),
        widths=(16, 32),
        layout="CT",
        stem={"widths": (16, 16)},
        img_size=32,
        num_classes=5,
        drop_path_rate=0.1,
    )


def train_steps(model: torch.nn.Module, steps: int) -> list[float]:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9
    )  # no per-parameter normalisation that would amplify float noise in near-zero gradients
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)  # the same drop-path masks in both runs
        x = torch.randn(4, 3, 32, 32, generator=generator)
        y = torch.randint(0, 5, (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_compiled_training_matches_eager():
    torch.manual_seed(0)
    eager = tiny_model()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module)
    eager_losses = train_steps(eager, 3)
    compiled_losses = train_steps(compiled, 3)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_module.parameters()):
        torch.testing.assert_close(p_compiled, p_eager, rtol=1e-3, atol=1e-5, msg=name)
    tables = [p for n, p in compiled_module.named_parameters() if n.endswith("rel_pos.table")]
    assert tables and all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)


@pytest.mark.parametrize(
    "overrides, mode",
    [
        ({}, "train"),
        ({}, "eval"),
        ({"transformer": {"attention": "post_softmax"}}, "train"),
        ({"transformer": {"rel_pos": "mlp"}}, "train"),
        ({"grad_checkpointing": True}, "train"),
    ],
    ids=["train", "eval", "post-softmax", "rel-pos-mlp", "grad-checkpointing"],
)
def test_whole_network_traces_as_one_graph(overrides, mode):
    """No graph breaks: compile fuses across blocks, and CUDA graphs (reduce-overhead) can capture the whole step."""
    overrides = dict(overrides)
    checkpointing = overrides.pop("grad_checkpointing", False)
    model = create_model("coatnet_nano", img_size=32, num_classes=5, **overrides)
    model.set_grad_checkpointing(checkpointing)
    getattr(model, mode)()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
