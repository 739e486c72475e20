"""User errors of the model side: config values, weights files, ``python -m coatnet`` and ``export.py``.

Each bad input must give a short ``ValueError`` (``CheckpointError`` is one) that names the problem
and the fix; the command lines turn it into one ``error:`` line and exit status 2. Everything runs
in-process on ``coatnet_nano`` at 32 px, or on a timm state dict of random values built from
meta-device shapes (no weights are initialised).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import get_args

import pytest
import torch
from test_convert import _meta_state_dict, _random_like
from test_export import checkpoint  # noqa: F401  (a fixture: a Lightning checkpoint of ImageClassifier, 32x64)

from coatnet import (
    ConvConfig,
    apply_overrides,
    blocks,
    config_from_dict,
    config_to_dict,
    create_model,
    get_config,
    list_models,
)
from coatnet.__main__ import main as coatnet_main
from coatnet.config import Activation
from coatnet.convert import convert_timm_state_dict
from coatnet.errors import CheckpointError
from coatnet.weights import (
    load_for_finetune,
    load_state_dict_file,
    load_weights,
    preprocessing_of,
    read_safetensors,
    save_weights,
)
from lightning_modules import export

PRE = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "crop_pct": 0.9}
CLASS_NAMES = ["c0", "c1", "c2", "c3"]
UNPICKLED = "this file's pickle was run"


class _RunsPrintWhenUnpickled:
    """A harmless stand-in for a malicious pickle: unpickling it calls print, where an attack would call os.system."""

    def __reduce__(self) -> tuple:
        return (print, (UNPICKLED,))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny weights file in both formats, their truncated copies, a text file, and timm coatnet_nano_rw
    weights (random values) as a timm state dict and converted."""
    folder = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    nano = create_model("coatnet_nano", num_classes=4, img_size=32)
    paths = {}
    for suffix in (".safetensors", ".pth"):
        paths[suffix] = save_weights(folder / f"nano{suffix}", nano, PRE, "test", CLASS_NAMES, "coatnet_nano")
        data = paths[suffix].read_bytes()
        paths[f"truncated{suffix}"] = folder / f"truncated{suffix}"
        paths[f"truncated{suffix}"].write_bytes(data[: len(data) // 2])
    paths["text"] = folder / "notes.pth"
    paths["text"].write_text("not a checkpoint\n")
    paths["pickled_objects.pth"] = folder / "pickled_objects.pth"
    torch.save({"state_dict": nano.state_dict(), "hook": _RunsPrintWhenUnpickled()}, paths["pickled_objects.pth"])
    timm_state = _random_like(_meta_state_dict("coatnet_nano_rw_224"))
    paths["timm"] = folder / "coatnet_nano_rw_224.pth"
    torch.save(timm_state, paths["timm"])
    converted = convert_timm_state_dict(timm_state, "coatnet_nano_rw_224")
    paths["converted"] = save_weights(folder / "nano_rw.safetensors", converted, PRE, "test", variant="coatnet_nano_rw")
    return paths


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("overrides", "field", "bad", "allowed"),
    [
        ({"conv": {"stride_at": "foo"}}, "conv.stride_at", "'foo'", "'dw', '1x1', 'pool'"),
        ({"conv": {"expand_from": "middle"}}, "conv.expand_from", "'middle'", "'output', 'input'"),
        ({"conv": {"act": "gelux"}}, "conv.act", "'gelux'", "'gelu', 'gelu_tanh', 'silu'"),
        ({"conv": {"stride_pool": "min"}}, "conv.stride_pool", "'min'", "'avg2', 'max2', 'avg', 'max' or None"),
        ({"head": {"kind": "foo"}}, "head.kind", "'foo'", "'pre_logits', 'norm_pool', 'pool'"),
        ({"transformer": {"attention": "soft"}}, "transformer.attention", "'soft'", "'pre_softmax', 'post_softmax'"),
        ({"transformer": {"rel_pos": "rope"}}, "transformer.rel_pos", "'rope'", "'table', 'mlp'"),
        ({"transformer": {"norm": "rms"}}, "transformer.norm", "'rms'", "'layernorm', 'batchnorm'"),
        ({"pool": "avg3"}, "pool", "'avg3'", "'avg2', 'max2', 'avg', 'max'"),
    ],
)
def test_literal_fields_name_the_field_the_value_and_the_choices(overrides, field, bad, allowed):
    with pytest.raises(ValueError) as err:
        get_config("coatnet_0", **overrides)
    assert f"{field}={bad}" in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"conv": 1}, ["conv=1", "section", "set one field: conv.FIELD"]),
        ({"transformer": {"head_dim": 0}}, ["transformer.head_dim=0", "> 0"]),
        ({"transformer": {"head_dim": "x"}}, ["transformer.head_dim='x'", "integer"]),
        ({"conv": {"se_ratio": 0.0}}, ["conv.se_ratio=0.0", "> 0"]),
        ({"head": {"dropout": 2}}, ["head.dropout=2", "[0, 1)"]),  # a drop rate of 1 drops everything
        ({"stem": {"widths": (32,)}}, ["stem.widths=(32,)", "tuple of 2 integers"]),
        ({"stem": {"bias": "yes"}}, ["stem.bias='yes'", "True or False"]),
        ({"depths": 5}, ["depths=5", "tuple of integers"]),
        ({"widths": (32, 0, 128, 256)}, ["widths=(32, 0, 128, 256)", "each entry must be > 0"]),
        ({"depths": (1, 2, 2)}, ["depths (1, 2, 2)", "one entry per stage"]),
        ({"layout": "", "depths": (), "widths": ()}, ["layout is empty"]),
    ],
)
def test_wrong_types_sizes_and_sections_are_refused_when_the_config_is_built(overrides, words):
    with pytest.raises(ValueError) as err:
        get_config("coatnet_nano", **overrides)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_every_variant_survives_the_checks_and_a_json_round_trip():
    """Weights files store the config as JSON (lists, no tuples): it must read back to the same config."""
    for name in list_models():
        config = get_config(name)
        assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config, name
    section = ConvConfig(stride_at="1x1")
    assert apply_overrides(get_config("coatnet_0"), conv=section).conv is section


def test_activation_names_are_the_ones_the_layers_build():
    assert set(get_args(Activation)) == set(blocks._ACTIVATIONS)


# ----------------------------------------------------------------------------- python -m coatnet


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("conv.stride_at=foo", "conv.stride_at='foo'"),
        ("conv=1", "conv=1"),
        ("transformer.head_dim=0", "transformer.head_dim=0"),
        ("head.kind=foo", "head.kind='foo'"),
    ],
)
def test_summary_with_a_bad_setting_is_one_error_line_and_status_2(setting, named, capsys):
    assert coatnet_main(["summary", "--variant", "coatnet_0", "--set", setting]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and named in captured.err and "Traceback" not in captured.err
    assert not captured.out


def test_coatnet_traceback_env_raises_and_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.setenv("COATNET_TRACEBACK", "1")
    with pytest.raises(ValueError, match="head.kind"):
        coatnet_main(["summary", "--variant", "coatnet_0", "--set", "head.kind=foo"])
    monkeypatch.delenv("COATNET_TRACEBACK")

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("coatnet.__main__.summarize", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        coatnet_main(["summary", "--variant", "coatnet_nano", "--img-size", "32"])


def _convert(files: dict[str, Path], source: str, output: Path, *extra: str) -> int:
    return coatnet_main(["convert", "--input", str(files[source]), "--output", str(output), *extra])


@pytest.mark.parametrize(("name", "words"), [("x.onnx", ["not '.onnx'"]), ("weights", ["the name has none"])])
def test_convert_refuses_other_output_suffixes(files, tmp_path, capsys, name, words):
    assert _convert(files, "timm", tmp_path / name) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in [".safetensors or .pth", *words]) and not list(tmp_path.iterdir())


def test_convert_names_a_missing_output_folder(files, tmp_path, capsys):
    assert _convert(files, "timm", tmp_path / "absent" / "o.safetensors") == 2
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / 'absent'} does not exist" in err and ".tmp" not in err


@pytest.mark.parametrize("source", [".safetensors", ".pth", "converted"])
def test_convert_says_a_converted_file_is_ready_to_use(files, tmp_path, capsys, source):
    assert _convert(files, source, tmp_path / "again.safetensors") == 2
    err = capsys.readouterr().err
    variant = "coatnet_nano_rw" if source == "converted" else "coatnet_nano"
    assert "already converted" in err and f"--model.model_name {variant} --model.init_from" in err
    assert "stage depths" not in err and not list(tmp_path.iterdir())


def test_convert_with_a_wrong_timm_name_says_which_variant_the_weights_are(files, tmp_path, capsys):
    assert _convert(files, "timm", tmp_path / "o.safetensors", "--timm-name", "coatnet_rmlp_nano_rw_224") == 2
    err = capsys.readouterr().err
    assert "missing" in err and "these weights are coatnet_nano_rw (timm coatnet_nano_rw_224)" in err
    assert "leave --timm-name out" in err and len(err.splitlines()) <= 8


# ----------------------------------------------------------------------------- weights files


def _loaders(path: Path) -> list:
    """Every reader ``--model.init_from`` or ``convert --input`` goes through."""
    target = create_model("coatnet_nano", num_classes=4, img_size=32)
    return [
        lambda: preprocessing_of(path),
        lambda: load_for_finetune(target, path),
        lambda: load_weights(path),
        lambda: load_state_dict_file(path),
    ]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing.pth", ["weights file not found", "check the path"]),
        ("missing.safetensors", ["weights file not found", "check the path"]),
        ("folder", ["is a folder, not a weights file", "pass a file inside it, e.g."]),
        ("truncated.safetensors", ["not a readable safetensors file", "truncated"]),
        ("truncated.pth", ["not a readable PyTorch checkpoint", "truncated"]),
        ("text", ["not a readable PyTorch checkpoint", "another kind of file"]),
        (
            "pickled_objects.pth",
            [
                "holds pickled Python objects (print) that weights_only loading refuses",
                "nothing in it was run",
                "python -m coatnet convert",
                "Only if you trust its source",
            ],
        ),
    ],
)
def test_unusable_weights_files_are_checkpoint_errors_naming_file_and_fix(files, case, words):
    folder = files[".pth"].parent
    path = folder if case == "folder" else files.get(case, folder / case)
    for load in _loaders(path):
        with pytest.raises(CheckpointError) as err:
            load()
        assert str(path) in str(err.value) and all(word in str(err.value) for word in words), str(err.value)
        if case.startswith("missing"):
            assert isinstance(err.value, FileNotFoundError)  # what callers that catch a missing file expect


def test_pickled_objects_are_refused_without_being_run(files, capsys):
    for load in _loaders(files["pickled_objects.pth"]):
        with pytest.raises(CheckpointError, match="pickled Python objects"):
            load()
    assert UNPICKLED not in capsys.readouterr().out


def test_read_safetensors_of_a_truncated_file_names_it(files):
    with pytest.raises(CheckpointError, match="truncated.safetensors is not a readable safetensors file"):
        read_safetensors(files["truncated.safetensors"])


@pytest.mark.parametrize("source", ["converted", "timm"])
def test_weights_of_another_variant_say_which_and_how_to_use_them(files, source):
    target = create_model("coatnet_nano", num_classes=4, img_size=32)
    with pytest.raises(CheckpointError) as err:
        load_for_finetune(target, files[source])
    first, *rest = str(err.value).splitlines()
    assert "holds coatnet_nano_rw weights" in first and "--model.model_name coatnet_nano_rw" in first
    assert any("missing" in line for line in rest) and len(rest) <= 3


# ----------------------------------------------------------------------------- export.py


def _export(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        export.main(argv)
    return exited.value.code, capsys.readouterr().err


def test_export_user_errors_are_one_error_line_and_status_2(files, checkpoint, tmp_path, capsys):  # noqa: F811
    out = ["--output", str(tmp_path / "m.onnx")]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (["--ckpt", str(tmp_path / "absent.ckpt"), *out], ["weights file not found", "absent.ckpt"]),
        (["--ckpt", str(files["truncated.pth"]), *out], ["truncated.pth", "not a readable PyTorch checkpoint"]),
        (["--ckpt", str(files["text"]), *out], ["notes.pth", "not a readable PyTorch checkpoint"]),
        (["--ckpt", str(files["timm"]), *out], ["plain weights", "python -m coatnet convert --input"]),
        (["--model", "coatnet_nano", "--image-size", "100", *out], ["image size 100x100", "multiple of 32"]),
        (["--model", "coatnet_nanoo", *out], ["unknown CoAtNet variant 'coatnet_nanoo'"]),
        (["--ckpt", str(checkpoint), "--output", str(blocker / "m.onnx")], ["cannot write", str(blocker)]),
        (["--ckpt", str(checkpoint), "--output", str(tmp_path)], ["is a folder", "model.onnx"]),
        (["--ckpt", str(checkpoint), "--image-size", "64", *out], ["trained at 32x64", "fine-tune at 64"]),
        (["--ckpt", str(checkpoint), "--num-classes", "3", *out], ["has 4 classes", "leave --num-classes out"]),
    ]
    for argv, words in cases:
        code, err = _export(argv, capsys)
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (argv, err)
        assert all(word in err for word in words), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--runs", "0", "must be >= 1, got 0"),
        ("--runs", "-3", "must be >= 1, got -3"),
        ("--runs", "many", "expected a whole number >= 1"),
        ("--atol", "nan", "must be a finite number >= 0, got nan"),
        ("--atol", "inf", "must be a finite number >= 0, got inf"),
        ("--atol", "-0.001", "must be a finite number >= 0, got -0.001"),
    ],
)
def test_export_refuses_bad_numbers_when_parsing(flag, value, words, tmp_path, capsys):
    code, err = _export(["--model", "coatnet_nano", "--output", str(tmp_path / "m.onnx"), flag, value], capsys)
    assert code == 2 and err.startswith(f"error: argument {flag}: {words}") and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_onnx_export_without_the_export_extra_names_it(module, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled module looks like to importlib
    code, err = _export(["--model", "coatnet_nano", "--output", str(tmp_path / "m.onnx"), "--check"], capsys)
    expected = f"error: ONNX export with --check or --benchmark needs {module}, in the export extra: "
    expected += 'pip install -e ".[export]"'
    assert code == 2 and err.splitlines()[0] == expected, err
    assert not any(tmp_path.iterdir())


def test_export_traceback_env_raises_the_error(monkeypatch, tmp_path):
    monkeypatch.setenv("COATNET_TRACEBACK", "1")
    with pytest.raises(ValueError, match="coatnet_nanoo"):
        export.main(["--model", "coatnet_nanoo", "--output", str(tmp_path / "m.onnx")])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_export_takes_a_weights_file_with_its_preprocessing(files, tmp_path, suffix):
    output = tmp_path / "m.torchscript"
    assert export.run(["--ckpt", str(files[suffix]), "--format", "torchscript", "--output", str(output)]) == 0
    extra = {"data_info.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.load(str(output), _extra_files=extra)
    info = json.loads(extra["data_info.json"])
    assert info["image_size"] == [32, 32] and info["mean"] == [0.5] * 3 and info["crop_pct"] == 0.9
    assert info["class_names"] == CLASS_NAMES
