"""Every registered variant, and every block type, keeps the same contract (as timm's tests/test_models.py).

Each variant is built at a tiny size: its depths and widths shrink, its conv, transformer, stem-kind and head
settings stay. On real tensors it must run forward and backward, give the feature maps its config
promises, survive a ``set_img_size`` round trip, fold its BatchNorms without changing the logits and
give the same gradients with grad checkpointing. A variant or block registered later is tested here
without a new test. Full-size builds run on the meta device, where they cost no memory.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env, trained_looking
from torch import nn

from coatnet import CoAtNet, CoAtNetConfig, create_model, fold_batchnorm, get_config, list_models
from coatnet.blocks import BLOCKS
from coatnet.config import PAPER_VARIANTS as PAPER_TABLE

# (variant, layout to force or None): every variant as registered, then each block type on its own.
CASES = [(name, None) for name in list_models()] + [("coatnet_nano", letter * 4) for letter in sorted(BLOCKS)]
IMG = 64
PAPER_VARIANTS = {f"coatnet_{n}" for n in range(5)}


def tiny_config(name: str, layout: str | None = None, **extra) -> CoAtNetConfig:
    """``name`` with 1-2 blocks per stage and widths of one or two heads; every other setting as registered."""
    config = get_config(name)
    stages = len(layout or config.layout)
    head_dim = config.transformer.head_dim
    widths = tuple(head_dim * (1 if i < stages // 2 else 2) for i in range(stages))
    stem = config.stem.widths[-1] if config.stem.patch_size else 16
    return get_config(
        name, layout=layout or config.layout, depths=(1,) * (stages - 1) + (2,), widths=widths,
        stem={"widths": (stem // 2 or 1, stem) if not config.stem.patch_size else (widths[0], widths[0])},
        img_size=IMG, num_classes=5, **extra,
    )  # fmt: skip


def tiny(name: str, layout: str | None = None, **extra) -> CoAtNet:
    return CoAtNet(tiny_config(name, layout, **extra))


def images(batch: int = 2, size: int = IMG) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_forward_backward_and_feature_maps(name, layout):
    torch.manual_seed(0)
    model = tiny(name, layout, drop_path_rate=0.1)
    config = model.config
    last, maps = model.forward_intermediates(images())
    assert [tuple(m.shape) for m in maps[1:]] == [(2, w, *hw) for w, hw in zip(config.widths, config.feature_sizes())]
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
    assert [IMG // m.shape[-1] for m in maps] == [info["reduction"] for info in model.feature_info]
    logits = model.forward_head(last)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_set_img_size_round_trip(name, layout):
    model = tiny(name, layout).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    untouched = {k: v.clone() for k, v in model.state_dict().items() if ".rel_pos." not in k}
    with torch.no_grad():
        before = model(images())
        model.set_img_size((IMG + 32, IMG))
        wide = model(images(1, IMG + 32)[..., :IMG])
        assert wide.shape == (1, 5) and model.pretrained_cfg["input_size"] == (3, IMG + 32, IMG)
        model.set_img_size(IMG)
        after = model(images())
    assert model.config == tiny_config(name, layout)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert all(torch.equal(v, untouched[k]) for k, v in model.state_dict().items() if k in untouched)
    if not any(".rel_pos.table" in k for k in shapes):  # an MLP bias or no attention: resolution-free
        torch.testing.assert_close(after, before)


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_fold_batchnorm_keeps_the_logits(name, layout):
    torch.manual_seed(0)
    model = trained_looking(tiny(name, layout)).eval()
    folded = fold_batchnorm(model)
    with torch.no_grad():
        torch.testing.assert_close(folded(images()), model(images()), rtol=1e-4, atol=1e-4)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < len(norms)


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_grad_checkpointing_gives_the_eager_gradients(name, layout):
    torch.manual_seed(0)
    eager = tiny(name, layout, drop_path_rate=0.2)
    recomputed = copy.deepcopy(eager)
    recomputed.set_grad_checkpointing(True)
    for model in (eager, recomputed):
        torch.manual_seed(2)  # drop-path and dropout masks: the recomputation must replay the same ones
        model(images()).logsumexp(1).mean().backward()
    for (key, param), other in zip(eager.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(other.grad, param.grad, rtol=1e-4, atol=1e-6, msg=key)
    for (key, buffer), other in zip(eager.named_buffers(), recomputed.buffers()):
        assert torch.equal(other, buffer), f"{key} moved differently under recomputation"


# The paper's coatnet_0..4 are built at full size by test_model.py::test_paper_variants_param_count_and_shapes.
@pytest.mark.parametrize("name", [name for name in list_models() if name not in PAPER_VARIANTS])
def test_full_size_variant_builds_and_runs_on_meta(name):
    """The registered depths and widths themselves (head_dim divides every Transformer width, ...)."""
    size = 32 if get_config(name).stem.patch_size else IMG
    with torch.device("meta"):
        model = create_model(name, img_size=size, num_classes=7)
        out = model(torch.empty(1, 3, size, size))
    assert out.shape == (1, 7)


def test_every_variant_is_listed_whichever_module_is_imported_first():
    """The paper's variants are data in coatnet.config and timm's register in coatnet.timm_variants: a fresh
    interpreter that imports only coatnet.model (where the registry is) still lists both."""
    probe = "from coatnet.model import list_models; print(' '.join(list_models()))"
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    listed = set(run.stdout.split())
    assert listed == set(list_models())
    assert set(PAPER_TABLE) | {"coatnet_0_rw", "coatnet_rmlp_2_rw", "coatnet_bn_0_rw"} <= listed
