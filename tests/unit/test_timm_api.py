"""timm's model API where users expect it: feature maps, head, preprocessing, layer groups, torch.hub."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT
from torch import nn

import coatnet
from coatnet import create_model, list_models


@pytest.fixture(scope="module")
def nano_rw() -> coatnet.CoAtNet:
    """A norm_pool head (timm _rw style), whose final norm makes ``norm=True`` visible; eval for repeatable maps."""
    torch.manual_seed(0)
    return create_model("coatnet_nano", img_size=(64, 96), num_classes=5, head={"kind": "norm_pool"}).eval()


def test_forward_features_is_the_last_map_and_forward_head_takes_it(nano_rw):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        last = nano_rw.forward_features(x)
        assert isinstance(last, torch.Tensor) and last.shape == (2, 256, 2, 3)
        torch.testing.assert_close(nano_rw.forward_head(last), nano_rw(x))
        assert nano_rw.forward_head(last, pre_logits=True).shape == (2, nano_rw.head.num_features)
        final, maps = nano_rw.forward_intermediates(x)
    torch.testing.assert_close(final, last)
    torch.testing.assert_close(maps[-1], last)


def test_forward_intermediates_follow_feature_info(nano_rw):
    x = torch.randn(1, 3, 64, 96)
    info = nano_rw.feature_info
    assert [i["module"] for i in info] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    with torch.no_grad():
        maps = nano_rw.forward_intermediates(x, intermediates_only=True)
        assert [m.shape[1] for m in maps] == [i["num_chs"] for i in info]
        assert [(64 // m.shape[2], 96 // m.shape[3]) for m in maps] == [(i["reduction"],) * 2 for i in info]
        last_two = nano_rw.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape[1] for m in last_two] == [128, 256]
        chosen = nano_rw.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        assert [m.shape[1] for m in chosen] == [32, 256]
        final, early = nano_rw.forward_intermediates(x, indices=[1, 2], stop_early=True)
        assert final.shape[1] == 64 and [m.shape[1] for m in early] == [32, 64]  # S3 and S4 never ran
        normed = nano_rw.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
    assert not torch.allclose(normed, maps[-1]), "norm=True applies the norm_pool head's final norm"
    torch.testing.assert_close(normed.mean((1,)), torch.zeros_like(normed[:, 0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("indices", "words"), [(6, "last 6 feature maps; there are 1..5"), ([5], "-5..4"), ([], "feature indices in")]
)
def test_forward_intermediates_refuses_indices_it_does_not_have(nano_rw, indices, words):
    with pytest.raises(ValueError, match=words):
        nano_rw.forward_intermediates(torch.randn(1, 3, 64, 96), indices=indices)
    with pytest.raises(ValueError, match="NCHW"):
        nano_rw.forward_intermediates(torch.randn(1, 3, 64, 96), output_fmt="NHWC")


def test_pretrained_cfg_drives_timm_data_config_and_follows_the_model():
    timm_data = pytest.importorskip("timm.data")
    model = create_model("coatnet_nano", img_size=64, num_classes=10)
    assert model.pretrained_cfg["classifier"] == "head.fc" and model.get_classifier() is model.head.fc
    assert dict(model.named_modules())[model.pretrained_cfg["first_conv"]] is model.stem.conv1
    assert create_model("vit_rel", img_size=32).pretrained_cfg["first_conv"] == "stem.proj"
    data = timm_data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 64, 64) and data["interpolation"] == "bicubic" and data["crop_pct"] == 0.875
    model.set_img_size(96)
    model.reset_classifier(3)
    assert model.pretrained_cfg["input_size"] == (3, 96, 96) and model.pretrained_cfg["num_classes"] == 3
    assert model.get_classifier().out_features == 3


def test_reset_classifier_to_zero_classes_gives_pooled_features():
    model = create_model("coatnet_nano", img_size=32, num_classes=10).eval()
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.head.num_features)
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(10, global_pool="max")


def test_group_matcher_gives_timm_layer_decay_one_group_per_block():
    timm_optim = pytest.importorskip("timm.optim")
    from timm.models import group_parameters

    model = create_model("coatnet_nano", img_size=32, num_classes=10)
    groups = timm_optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    by_param = {id(p): group["lr_scale"] for group in groups for p in group["params"]}
    scale = {name: by_param[id(p)] for name, p in model.named_parameters()}
    assert len(set(scale.values())) == sum(model.config.depths) + 2  # stem, each block, head
    assert scale["stem.conv1.weight"] == min(scale.values()) and scale["head.fc.weight"] == 1.0
    assert scale["stages.1.0.conv_dw.weight"] < scale["stages.1.1.conv_dw.weight"] < scale["stages.2.0.attn.qkv.weight"]
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == len(model.stages) + 2


def test_hubconf_has_every_variant_and_torch_hub_loads_one():
    hub = torch.hub.load(str(REPO_ROOT), "coatnet_nano", source="local", trust_repo=True, num_classes=3)
    assert isinstance(hub, coatnet.CoAtNet) and hub.config == coatnet.get_config("coatnet_nano", num_classes=3)
    import hubconf

    assert all(callable(getattr(hubconf, name)) for name in list_models())
    for dependency in hubconf.dependencies:
        __import__(dependency)
    assert (REPO_ROOT / "coatnet" / "py.typed").is_file()


def test_features_only_backbone_returns_the_chosen_maps_and_no_head():
    torch.manual_seed(0)
    backbone = create_model("coatnet_nano", features_only=True, out_indices=(0, 2), img_size=64).eval()
    assert [info["module"] for info in backbone.feature_info] == ["stem", "stages.1"]
    assert not any(name.startswith(("head", "stages.2")) for name, _ in backbone.named_parameters())
    full = create_model("coatnet_nano", img_size=64).eval()
    full.load_state_dict(backbone.state_dict(), strict=False)  # the full model's names
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x)
        expected = full.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)
    every_stage = create_model("vit_rel", features_only=True, img_size=32)
    assert [info["module"] for info in every_stage.feature_info] == ["stages.0"]
    with pytest.raises(ValueError, match="features_only=True"):
        create_model("coatnet_nano", out_indices=(1,))
