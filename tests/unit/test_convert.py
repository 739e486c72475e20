"""timm CoAtNet weights -> coatnet.CoAtNet: same outputs, files, names, errors and the CLI.

Models are built at 64x64 with 10 classes to stay cheap on CPU (2 shared cores). Every timm name
is checked at full depth on the ``meta`` device: parameter names, shapes and counts after mapping,
and variant detection. Outputs are compared on real weights for coatnet_nano_rw at full depth and
for every other architecture with its depths cut to (1, 1, 2, 1) through timm's config overlay
and our ``depths`` override: widths, heads, stem, layer scale, SE, norms, pooling and rel-pos
options stay the variant's own, and the blocks removed repeat kept ones. coatnet_1_224,
coatnet_4_224 and coatnet_rmlp_2_rw_384 are left out of that: with cut depths they are exactly
coatnet_0_224, coatnet_3_224 and coatnet_rmlp_2_rw_224.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import timm
import torch
from conftest import REPO_ROOT, subprocess_env

from coatnet import CoAtNet, create_model
from coatnet.convert import (
    IMAGENET_MEAN,
    TIMM_TO_VARIANT,
    convert_timm_state_dict,
    detect_variant,
    from_timm_model,
    map_timm_state_dict,
    timm_img_size,
    timm_preprocessing,
    variant_for_timm_name,
)
from coatnet.errors import CheckpointError
from coatnet.model import get_config
from coatnet.weights import load_state_dict_file, load_weights, save_weights

IMG = 64
CLASSES = 10
CUT_DEPTHS = (1, 1, 2, 1)
NON_SQUARE = (64, 96)  # grids 4x6 and 2x3 in the Transformer stages
SAME_WHEN_CUT = {"coatnet_1_224", "coatnet_4_224", "coatnet_rmlp_2_rw_384"}
CUT = sorted(set(TIMM_TO_VARIANT) - SAME_WHEN_CUT - {"coatnet_nano_rw_224"})


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics, layer scales and tables, so that each of them is exercised."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                module.num_batches_tracked.fill_(7)
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "relative_position_bias_table")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model.eval()


@functools.cache
def _timm(name: str, cut: bool = False) -> torch.nn.Module:
    """A random timm model, built once per test session."""
    extra = {"depths": CUT_DEPTHS} if cut else {}
    torch.manual_seed(0)
    return _randomise(timm.create_model(name, pretrained=False, num_classes=CLASSES, img_size=IMG, **extra))


@functools.cache
def _meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Names and shapes of a full-depth timm model, without memory or init time."""
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=CLASSES, img_size=IMG).state_dict()


def _images(size: int | tuple[int, int] = IMG) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))


def _assert_same_logits(theirs: torch.nn.Module, ours: CoAtNet, size: int | tuple[int, int] = IMG) -> None:
    x = _images(size)
    with torch.no_grad():
        expected, got = theirs(x), ours.eval()(x)
    assert got.shape == (2, CLASSES)
    assert (got - expected).abs().max().item() < 1e-4


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TIMM_TO_VARIANT))
def test_every_timm_name_maps_onto_its_variant_at_full_depth(name):
    theirs = _meta_state_dict(name)
    with torch.device("meta"):
        ours = create_model(TIMM_TO_VARIANT[name], num_classes=CLASSES, img_size=IMG)
    mapped = map_timm_state_dict(theirs, ours.config)
    expected = ours.state_dict()
    assert list(mapped) == list(expected)  # same tensors, even in the same order
    assert all(mapped[k].shape == v.shape for k, v in expected.items())
    assert sum(v.numel() for k, v in theirs.items() if "running_" not in k and "num_batches" not in k) == _params(ours)
    assert detect_variant(theirs) == TIMM_TO_VARIANT[name]


def test_full_depth_coatnet_nano_rw_gives_timm_logits():
    theirs = _timm("coatnet_nano_rw_224")
    ours = from_timm_model(theirs)
    assert _params(ours) == _params(theirs)
    _assert_same_logits(theirs, ours)


@pytest.mark.parametrize("name", CUT)
def test_variants_give_timm_logits_with_cut_depths(name):
    theirs = _timm(name, cut=True)
    ours = from_timm_model(theirs, depths=CUT_DEPTHS)
    assert ours.config.depths == CUT_DEPTHS and _params(ours) == _params(theirs)
    _assert_same_logits(theirs, ours)


def test_other_resolution_table_model():
    # timm resizes its tables with BeiT-style geometric interpolation, ours (coatnet.resize_table)
    # is bicubic with aligned corners: the two differ, so this converts timm's already-resized tables.
    theirs = timm.create_model(
        "coatnet_0_rw_224", pretrained=False, num_classes=CLASSES, img_size=IMG, depths=CUT_DEPTHS
    )
    _randomise(theirs).set_input_size(img_size=(96, 96))
    ours = from_timm_model(theirs, depths=CUT_DEPTHS)
    assert ours.img_size == (96, 96)
    assert ours.stages[2][0].attn.rel_pos.table.shape[0] == (2 * 6 - 1) ** 2
    _assert_same_logits(theirs, ours, size=96)


def test_other_resolution_mlp_model_through_our_resize():
    # The rel-pos MLP has no table, so our img_size override and timm's resize agree exactly.
    theirs = timm.create_model(
        "coatnet_rmlp_nano_rw_224", pretrained=False, num_classes=CLASSES, img_size=IMG, depths=CUT_DEPTHS
    )
    state_dict = _randomise(theirs).state_dict()
    ours = convert_timm_state_dict(state_dict, "coatnet_rmlp_nano_rw_224.sw_in1k", img_size=96, depths=CUT_DEPTHS)
    theirs.set_input_size(img_size=(96, 96))
    assert ours.img_size == (96, 96)
    _assert_same_logits(theirs, ours, size=96)


@functools.cache
def _non_square_timm() -> torch.nn.Module:
    """Full-depth timm coatnet_nano_rw built for NON_SQUARE inputs: its tables' row counts do not say H from W."""
    torch.manual_seed(0)
    theirs = timm.create_model("coatnet_nano_rw_224", pretrained=False, num_classes=CLASSES, img_size=NON_SQUARE)
    return _randomise(theirs)


def test_non_square_timm_model_converts_at_its_input_size():
    theirs = _non_square_timm()
    ours = from_timm_model(theirs)
    assert ours.img_size == NON_SQUARE
    _assert_same_logits(theirs, ours, size=NON_SQUARE)
    with pytest.raises(CheckpointError, match=r"non-square grid's.*--img-size H W"):
        convert_timm_state_dict(theirs.state_dict(), "coatnet_nano_rw_224")


def test_cli_converts_non_square_weights_given_img_size_h_w(tmp_path, capsys):
    from coatnet.__main__ import main

    theirs = _non_square_timm()
    source, output = tmp_path / "nano.pth", tmp_path / "nano.safetensors"
    torch.save(theirs.state_dict(), source)
    assert main(["convert", "--input", str(source), "--output", str(output)]) == 2
    assert "--img-size H W" in capsys.readouterr().err
    assert main(["convert", "--input", str(source), "--output", str(output), "--img-size", *map(str, NON_SQUARE)]) == 0
    loaded, meta = load_weights(output)
    assert meta["variant"] == "coatnet_nano_rw" and loaded.img_size == NON_SQUARE
    _assert_same_logits(theirs, loaded, size=NON_SQUARE)


def test_img_size_takes_h_w_or_one_side(capsys):
    from coatnet.__main__ import build_parser

    def img_size(*sides: str) -> tuple[int, int]:
        return build_parser().parse_args(["convert", "--input", "a", "--output", "b", "--img-size", *sides]).img_size

    assert img_size("64") == (64, 64) and img_size("64", "96") == (64, 96)
    with pytest.raises(SystemExit) as exit_info:
        img_size("64", "96", "128")
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "--img-size takes H W" in error


def test_overrides_resize_tables_and_reset_classes():
    state_dict = _timm("coatnet_0_rw_224", cut=True).state_dict()
    ours = convert_timm_state_dict(state_dict, "coatnet_0_rw", img_size=128, num_classes=3, depths=CUT_DEPTHS)
    assert ours.img_size == (128, 128) and ours.config.num_classes == 3
    assert ours.stages[3][0].attn.rel_pos.table.shape[0] == (2 * 4 - 1) ** 2
    assert ours(_images(128)).shape == (2, 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path, suffix):
    theirs = _timm("coatnet_nano_rw_224", cut=True)
    ours = from_timm_model(theirs, depths=CUT_DEPTHS)
    path = tmp_path / f"nano{suffix}"
    pre = timm_preprocessing("coatnet_nano_rw_224.sw_in1k")
    save_weights(path, ours, pre, {"timm_name": "coatnet_nano_rw_224.sw_in1k"}, variant="coatnet_nano_rw")
    loaded, meta = load_weights(path)
    assert meta["variant"] == "coatnet_nano_rw" and meta["source"]["timm_name"] == "coatnet_nano_rw_224.sw_in1k"
    assert meta["preprocessing"] == {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic", "crop_pct": 0.9}
    assert loaded.config == ours.config
    _assert_same_logits(theirs, loaded)


def test_timm_file_formats(tmp_path):
    from safetensors.torch import save_file

    state_dict = _timm("coatnet_nano_rw_224", cut=True).state_dict()
    torch.save({"state_dict": state_dict, "epoch": 3}, tmp_path / "train.pth.tar.pth")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp_path / "model.safetensors"))
    torch.save({"model": state_dict}, tmp_path / "model.bin")
    for name in ("train.pth.tar.pth", "model.safetensors", "model.bin"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == state_dict.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())


def test_wrong_variant_error_is_short_and_counted():
    with pytest.raises(CheckpointError) as err:
        convert_timm_state_dict(_meta_state_dict("coatnet_0_rw_224"), "coatnet_nano_rw")
    message = str(err.value)
    assert "coatnet_nano_rw" in message and len(message.splitlines()) <= 10
    assert "missing" in message and "shape" in message and "more)" in message


def test_wrong_family_error():
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)}
    with pytest.raises(CheckpointError) as err:
        convert_timm_state_dict(resnet_like, "coatnet_0_rw")
    lines = str(err.value).splitlines()
    assert len(lines) <= 10 and any("unexpected: conv1.weight" in line for line in lines)


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.pth", b"just some text\n"), ("weights.safetensors", b"\x00\x01garbage"), ("empty.pt", b"")],
)
def test_not_a_checkpoint(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=name):
        load_state_dict_file(path)


def test_checkpoint_without_tensors_and_missing_file(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth holds no state dict"):
        load_state_dict_file(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_state_dict_file(tmp_path / "absent.pth")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        load_state_dict_file(tmp_path / "weights.onnx")


def test_names_and_preprocessing():
    assert variant_for_timm_name("coatnet_0_rw_224.sw_in1k") == "coatnet_0_rw"
    assert variant_for_timm_name("coatnet_0_rw") == "coatnet_0_rw"
    assert variant_for_timm_name("hf-hub:timm/coatnet_rmlp_2_rw_384.sw_in12k_ft_in1k") == "coatnet_rmlp_2_rw"
    assert variant_for_timm_name("coatnet_3") == "coatnet_3"
    with pytest.raises(CheckpointError, match="maxvit_tiny_tf_224"):
        variant_for_timm_name("maxvit_tiny_tf_224.in1k")
    assert timm_img_size("coatnet_rmlp_2_rw_384.sw_in12k_ft_in1k") == 384 and timm_img_size("coatnet_0_rw") is None
    assert timm_preprocessing("coatnet_0_rw_224.sw_in1k")["crop_pct"] == 0.95
    assert timm_preprocessing("coatnet_bn_0_rw_224.sw_in1k")["mean"] == IMAGENET_MEAN
    assert timm_preprocessing("coatnet_rmlp_2_rw_384")["crop_pct"] == 1.0
    assert timm_preprocessing("coatnet_2_224")["mean"] == IMAGENET_MEAN
    for timm_name, variant in TIMM_TO_VARIANT.items():
        assert get_config(variant).layout == "CCTT", timm_name


def _random_like(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in state_dict.items()}


def test_cli_convert_list_and_summary(tmp_path, capsys):
    from coatnet.__main__ import main

    # Random values in timm's full-depth layout: the numerics are checked above, this checks the command.
    state_dict = _random_like(_meta_state_dict("coatnet_nano_rw_224"))
    source = tmp_path / "coatnet_nano_rw_224.pth"
    torch.save(state_dict, source)
    output = tmp_path / "nano.safetensors"
    command = [sys.executable, "-m", "coatnet", "convert", "--timm-name", "coatnet_nano_rw_224.sw_in1k"]
    result = subprocess.run(
        [*command, "--input", str(source), "--output", str(output)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "coatnet_nano_rw_224.sw_in1k" in result.stdout and str(output) in result.stdout
    model, meta = load_weights(output)
    assert meta["variant"] == "coatnet_nano_rw" and model.img_size == (IMG, IMG)
    assert meta["preprocessing"]["crop_pct"] == 0.9
    expected = map_timm_state_dict(state_dict, model.config)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coatnet_nano_rw_224.pth", "nano.safetensors"]

    assert main(["list"]) == 0 and "coatnet_rmlp_2_rw_384" in capsys.readouterr().out
    assert main(["summary", "--variant", "coatnet_nano", "--img-size", "32", "--num-classes", "10"]) == 0
    assert "| stage4 |" in capsys.readouterr().out
    assert main(["convert", "--input", str(tmp_path / "absent.pth"), "--output", str(output)]) == 2
    assert "absent.pth" in capsys.readouterr().err


def test_summary_takes_config_fields(capsys):
    from coatnet.__main__ import main

    def total(*settings: str) -> str:
        assert main(["summary", "--variant", "coatnet_0", *[a for s in settings for a in ("--set", s)]]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    assert total() == "| total | | 25.04M | 4.547G |"
    assert total("layout=CCCT") == "| total | | 23.53M | 3.995G |"  # the README's ablation table
    assert total("conv.stride_at=1x1", "drop_path_rate=0.3") == "| total | | 25.04M | 4.142G |"
    assert main(["summary", "--variant", "coatnet_0", "--set", "layot=CCCT"]) == 2
    assert "unknown CoAtNet config field(s) ['layot']" in capsys.readouterr().err
    assert main(["summary", "--variant", "coatnet_0", "--set", "conv=1", "--set", "conv.act=silu"]) == 2
    assert "conv was set to a value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["summary", "--variant", "coatnet_0", "--set", "layout"])


def test_summary_reports_activation_memory_with_and_without_recomputation(capsys):
    from coatnet.__main__ import main

    def activations_mib(*extra: str) -> float:
        assert main(["summary", "--variant", "coatnet_nano", "--img-size", "64", *extra]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0].endswith("| train activations / image |")
        return float(lines[-1].split("|")[-2].split()[0])

    plain = activations_mib("--activations")
    assert plain > activations_mib("--grad-checkpointing", "0", "1") > activations_mib("--grad-checkpointing") > 0
