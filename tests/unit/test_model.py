"""The CoAtNet model: sizes, counts, errors, layouts, regularisation and determinism."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from coatnet import CoAtNetConfig, coatnet_0, create_model, get_config
from coatnet.blocks import BLOCKS, DropPath
from coatnet.summary import activation_bytes, count_macs, summarize

# timm's paper-like models at 224x224 with 1000 classes (ANCHORS.md section 2).
TIMM_PARAMS = {
    "coatnet_0": 25_036_820,
    "coatnet_1": 42_230_000,
    "coatnet_2": 74_680_000,
    "coatnet_3": 166_970_000,
    "coatnet_4": 275_430_000,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_paper_variants_param_count_and_shapes(name):
    # Built on the meta device: the largest variants cost seconds and gigabytes to initialise on CPU.
    with torch.device("meta"):
        model = create_model(name)
        last, features = model.forward_intermediates(torch.empty(2, 3, 224, 224), indices=[1, 2, 3, 4])
        logits = model.forward_head(last)
    assert abs(n_params(model) - TIMM_PARAMS[name]) / TIMM_PARAMS[name] < 0.005
    widths = model.config.widths
    assert [tuple(f.shape) for f in features] == [
        (2, widths[0], 56, 56),
        (2, widths[1], 28, 28),
        (2, widths[2], 14, 14),
        (2, widths[3], 7, 7),
    ]
    assert tuple(logits.shape) == (2, 1000)


def test_multiply_adds_match_reference():
    dw = count_macs(create_model("coatnet_0"), (224, 224))
    one_by_one = count_macs(create_model("coatnet_0", conv={"stride_at": "1x1"}), (224, 224))
    assert abs(dw / 4.55e9 - 1) < 0.03
    assert abs(one_by_one / 4.2e9 - 1) < 0.03
    assert one_by_one < dw


def test_summary_parts_add_up():
    model = create_model("coatnet_nano")
    rows = summarize(model, (32, 32))
    assert [r.name for r in rows] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(r.params for r in rows) == n_params(model)
    assert all(r.macs > 0 for r in rows)


def test_nano_forward_and_non_square_features():
    model = create_model("coatnet_nano", img_size=(64, 96), num_classes=5).eval()
    feats = model.forward_intermediates(torch.randn(2, 3, 64, 96), indices=4, intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert model(torch.randn(2, 3, 64, 96)).shape == (2, 5)


@pytest.mark.parametrize("size", [(100, 224), (224, 48), 33])
def test_image_size_not_multiple_of_32_is_rejected(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("coatnet_nano", img_size=size)


def test_input_size_mismatch_names_both_sizes():
    model = create_model("coatnet_nano", img_size=64)
    with pytest.raises(ValueError, match=r"input is 96x96 but this CoAtNet was built for 64x64"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))


def test_config_errors_are_explicit():
    with pytest.raises(ValueError, match="unknown CoAtNet variant"):
        create_model("coatnet_9")
    with pytest.raises(ValueError, match="layout"):
        create_model("coatnet_nano", layout="CCXT")
    with pytest.raises(ValueError, match="one entry per stage"):
        create_model("coatnet_nano", layout="CCT")
    with pytest.raises(ValueError, match="unknown CoAtNet config field"):
        create_model("coatnet_nano", dropout=0.1)
    with pytest.raises(ValueError, match="unknown conv config field"):
        create_model("coatnet_nano", conv={"kernel": 5})
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_model("coatnet_nano", drop_path_rate=1.5)


@pytest.mark.parametrize("layout", ["CCCC", "CCCT", "CCTT", "CTTT", "TTTT"])
def test_layouts(layout):
    model = create_model("coatnet_nano", layout=layout, img_size=64, num_classes=3)
    assert [{type(block) for block in stage} for stage in model.stages] == [{BLOCKS[c]} for c in layout]
    assert [stage.tokens_last for stage in model.stages] == [BLOCKS[c].tokens_last for c in layout]
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert out.shape == (2, 3)


def test_vit_rel_is_patch_stem_plus_relative_attention_only():
    model = create_model("vit_rel", img_size=64, num_classes=4)
    assert type(model.stem).__name__ == "PatchStem"
    assert model.config.layout == "T" and model.config.total_stride == 16
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 384, 4, 4)


def test_stride_one_stem_for_small_images():
    model = create_model("coatnet_nano", img_size=32, stem={"stride": 1})
    assert model.config.total_stride == 16
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("coatnet_nano", img_size=40, stem={"stride": 1})


def test_stride_placement_changes_where_the_depthwise_conv_runs():
    dw = create_model("coatnet_nano", img_size=64)
    v1 = create_model("coatnet_nano", img_size=64, conv={"stride_at": "1x1"})
    assert dw.stages[0][0].conv_dw.stride == (2, 2) and dw.stages[0][0].conv_expand.stride == (1, 1)
    assert v1.stages[0][0].conv_dw.stride == (1, 1) and v1.stages[0][0].conv_expand.stride == (2, 2)
    assert v1(torch.randn(1, 3, 64, 64)).shape == dw(torch.randn(1, 3, 64, 64)).shape


def test_block_widths_follow_the_paper():
    model = coatnet_0()
    s3 = model.stages[2][0]
    assert s3.attn.heads == 384 // 32  # heads from the output width, head size 32
    assert s3.mlp.fc1.out_features == 4 * 384
    s1 = model.stages[0][0]
    assert s1.conv_expand.out_channels == 4 * 96  # expansion from the output width
    assert s1.se.fc1.out_channels == int(0.25 * 96)


def test_no_weight_decay_names_are_the_tables():
    model = create_model("coatnet_nano")
    names = model.no_weight_decay()
    tables = {n for n, _ in model.named_parameters() if n.endswith("rel_pos.table")}
    assert names == tables and len(tables) == 3  # S3 has 2 blocks, S4 has 1
    table = dict(model.named_parameters())[sorted(tables)[0]]
    assert table.std().item() == pytest.approx(0.02, rel=0.3)  # truncated normal, not zeros


def test_gradients_reach_relative_position_tables():
    model = create_model("coatnet_nano", img_size=64)  # S4 is 2x2: a 1x1 grid has no relative offsets to learn
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    params = dict(model.named_parameters())
    for name in model.no_weight_decay():
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_drop_path_active_in_train_inactive_in_eval():
    model = create_model("coatnet_nano", drop_path_rate=0.5)
    rates = [m.rate for m in model.modules() if isinstance(m, DropPath)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5)
    assert rates == sorted(rates)  # linear over blocks
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    drop = DropPath(0.5).train()
    y = drop(torch.ones(1000, 3))
    zeros = (y.sum(1) == 0).float().mean().item()
    assert 0.4 < zeros < 0.6 and y.max().item() == pytest.approx(2.0)


def test_determinism_under_seed():
    torch.manual_seed(123)
    a = create_model("coatnet_nano", drop_path_rate=0.1)
    torch.manual_seed(123)
    b = create_model("coatnet_nano", drop_path_rate=0.1)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(7)
    ya = a(x)
    torch.manual_seed(7)
    yb = b(x)
    assert torch.equal(ya, yb)


def test_channels_last_matches_contiguous():
    model = create_model("coatnet_nano", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_config_round_trip():
    from coatnet import config_from_dict, config_to_dict

    cfg = get_config("coatnet_0_rw", img_size=(64, 96), num_classes=3)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert isinstance(cfg, CoAtNetConfig)


def test_grad_checkpointing_recomputes_blocks_and_keeps_gradients():
    def run(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor], int, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = create_model("coatnet_nano", img_size=64, num_classes=10, drop_path_rate=0.3)
        model.set_grad_checkpointing(checkpointing)
        calls = []
        first_block = model.stages[2][0]
        first_block.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation may stop early: no post hook
        images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)  # drop-path masks: the recomputation must replay the same ones
        loss = model(images).logsumexp(1).mean()
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()], len(calls), dict(model.named_buffers())

    loss, grads, calls, buffers = run(False)
    loss_ckpt, grads_ckpt, calls_ckpt, buffers_ckpt = run(True)
    assert (calls, calls_ckpt) == (1, 2), "a checkpointed block runs again in backward"
    for name, buffer in buffers.items():  # BatchNorm running statistics move once per step, not once per run
        assert torch.equal(buffers_ckpt[name], buffer), name
    torch.testing.assert_close(loss_ckpt, loss)
    for grad, grad_ckpt in zip(grads, grads_ckpt):
        torch.testing.assert_close(grad_ckpt, grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # nothing to recompute without autograd
        model = create_model("coatnet_nano", img_size=64)
        model.set_grad_checkpointing(True)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_grad_checkpointing_of_chosen_stages_only():
    model = create_model("coatnet_nano", img_size=64, num_classes=10)
    calls = {index: 0 for index in range(4)}
    for index, stage in enumerate(model.stages):
        stage[0].register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    model.set_grad_checkpointing([0, 2])
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert calls == {0: 2, 1: 1, 2: 2, 3: 1}
    with pytest.raises(ValueError, match=r"indices 0\.\.3 \(S1\.\.S4\), got \[4\]"):
        model.set_grad_checkpointing([4])


def count_live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # isinstance on torch.distributed's deprecated reduce_op
        return sum(isinstance(obj, torch.Tensor) for obj in gc.get_objects())


def test_activation_bytes_count_what_backward_keeps():
    model = create_model("coatnet_nano", img_size=64, num_classes=10).eval()
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    live_tensors = count_live_tensors()
    plain = activation_bytes(model, (64, 64))
    assert count_live_tensors() == live_tensors, "the counted graph was not freed"
    assert not model.training and set(plain) == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
    assert all(torch.equal(buffer, buffers[name]) for name, buffer in model.named_buffers()), "running statistics moved"
    model.set_grad_checkpointing([0, 1])
    recomputed = activation_bytes(model, (64, 64))
    # a recomputed stage keeps only its blocks' inputs (float32, one image)
    block_inputs = {name: 0 for name in plain}
    hooks = [
        block.register_forward_pre_hook(
            lambda m, args, name=f"stage{i + 1}": block_inputs.__setitem__(name, block_inputs[name] + args[0].nbytes)
        )
        for i, stage in enumerate(model.stages)
        for block in stage
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert recomputed["stage1"] == block_inputs["stage1"] and recomputed["stage2"] == block_inputs["stage2"]
    assert plain["stage1"] > 5 * recomputed["stage1"] and plain["stage2"] > 5 * recomputed["stage2"]
    assert all(recomputed[name] == plain[name] for name in ("stem", "stage3", "stage4", "head"))
