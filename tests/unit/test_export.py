"""export.py: ONNX and TorchScript files match eager PyTorch on a tiny CoAtNet (each exported once)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from coatnet import create_model
from lightning_modules import export

INFO = {"class_names": [f"c{i}" for i in range(4)], "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": [32, 64],
        "resize": "resize", "crop_pct": 1.0, "interpolation": "bicubic"}  # fmt: skip
FORMATS = ["onnx", "torchscript"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint shaped like ImageClassifier's (``model.`` prefix, hyper-parameters, data_info), non-square input."""
    hp = {
        "model_name": "coatnet_nano",
        "num_classes": 4,
        "image_size": (32, 64),
        "model_overrides": {"drop_path_rate": 0.1},
    }
    model = create_model("coatnet_nano", num_classes=4, img_size=(32, 64), drop_path_rate=0.1)
    with torch.no_grad():  # non-zero, head-specific relative-position tables, as after training
        for name, param in model.named_parameters():
            if "rel_pos" in name:
                param.normal_(0, 1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": hp, "state_dict": state, "data_info": INFO}, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each format written once through ``export.run`` with ``--check``: path and printed output."""
    folder = tmp_path_factory.mktemp("exported")
    results = {}
    for fmt in FORMATS:
        output = folder / f"model.{fmt}"
        status = export.run(["--ckpt", str(checkpoint), "--format", fmt, "--output", str(output), "--check"])
        assert status == 0, f"{fmt} parity check failed"
        results[fmt] = output
    return results


def test_load_checkpoint_rebuilds_the_network(checkpoint):
    model, info = export.load_checkpoint(checkpoint)
    assert not model.training and info == INFO
    assert model.config.img_size == (32, 64) and model.config.drop_path_rate == 0.1


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_eager_at_other_batch_sizes(checkpoint, exported, fmt):
    model, _ = export.load_checkpoint(checkpoint)
    for batch in (1, 5):  # traced/exported with batch 2
        assert (
            export.max_abs_diff(model, exported[fmt], fmt, export.example_input(INFO, batch=batch, seed=batch)) < 1e-4
        )


def test_onnx_carries_opset_and_preprocessing_metadata(exported):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(exported["onnx"]))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == 18  # the dynamo exporter's
    metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert metadata["class_names"] == INFO["class_names"] and metadata["mean"] == INFO["mean"]


def load_torchscript(path: Path, **kwargs) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return torch.jit.load(str(path), **kwargs)


def test_torchscript_carries_preprocessing(exported):
    files = {"data_info.json": ""}
    load_torchscript(exported["torchscript"], _extra_files=files)
    assert json.loads(files["data_info.json"]) == INFO


def test_batchnorm_is_folded_unless_told_otherwise(checkpoint, exported, tmp_path):
    def batchnorm_calls(path: Path) -> int:
        return str(load_torchscript(path).inlined_graph).count("aten::batch_norm")

    as_trained = tmp_path / "as_trained.torchscript"
    argv = ["--ckpt", str(checkpoint), "--format", "torchscript", "--output", str(as_trained), "--no-fold-bn"]
    assert export.run(argv) == 0
    assert batchnorm_calls(exported["torchscript"]) == 0 < batchnorm_calls(as_trained)


def test_check_fails_when_the_file_disagrees(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(export.EXPORTERS, "onnx", lambda model, example, output, info, **kw: output.write_bytes(b"x"))
    monkeypatch.setattr(export, "check_onnx_opset", lambda *args: None)  # the stand-in file is no ONNX model
    monkeypatch.setattr(export, "max_abs_diff", lambda *args: 1.0)
    assert export.run(["--ckpt", str(checkpoint), "--output", str(tmp_path / "m.onnx"), "--check"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_arguments_are_validated():
    with pytest.raises(SystemExit):
        export.parse_args(["--model", "coatnet_nano", "--format", "torchscript", "--output", "x", "--benchmark"])
    with pytest.raises(SystemExit):
        export.parse_args(["--model", "coatnet_nano", "--output", "x", "--opset", "13"])


def test_benchmark_times_both_runtimes_with_a_progress_bar(checkpoint, exported, capsys):
    model, info = export.load_checkpoint(checkpoint)
    result = export.benchmark(model, exported["onnx"], info, runs=2, warmup=1)
    assert result["eager_ms"] > 0 and result["onnxruntime_ms"] > 0 and result["threads"] >= 1
    assert "timing eager_ms vs onnxruntime_ms" in capsys.readouterr().err  # the bar over the timed rounds


def test_torchscript_export_says_torch_deprecates_it(checkpoint, tmp_path):
    """torch.jit.trace's own FutureWarning reaches the user (export.py used to hide it)."""
    with pytest.warns(FutureWarning, match="torch.jit.trace` is deprecated"):
        export.run(["--ckpt", str(checkpoint), "--format", "torchscript", "--output", str(tmp_path / "m.ts")])


@pytest.mark.parametrize("opset", [17, 26, 28, 99])
def test_opsets_the_exporter_cannot_write_are_refused_when_parsing(opset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        export.parse_args(["--model", "coatnet_nano", "--output", str(tmp_path / "m.onnx"), "--opset", str(opset)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"--opset {opset}: the ONNX exporter writes opsets 18 to 25" in err
    assert not any(tmp_path.iterdir())


def test_the_opset_range_is_onnxscripts():
    """torch.onnx exports at 18 and converts with onnxscript's version converter: its limit is export.py's."""
    from onnxscript.version_converter import _version_converter

    assert export.MAX_OPSET == _version_converter.SUPPORTED_MAX_ONNX_OPSET


def test_a_failed_opset_conversion_is_an_error_and_leaves_no_file(checkpoint, tmp_path, monkeypatch, capsys):
    """Past onnxscript's range the converter prints a traceback and keeps opset 18 with newer operators inside."""
    monkeypatch.setattr(export, "MAX_OPSET", 99)  # as before the parse-time check
    with pytest.raises(SystemExit) as exited:
        export.main(["--ckpt", str(checkpoint), "--output", str(tmp_path / "m.onnx"), "--opset", "28"])
    err = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2
    assert err[0] == (
        "error: ONNX export of m.onnx failed: the converter wrote opset 18, not --opset 28; use an opset from 18 to 99"
    )
    assert not any(tmp_path.iterdir())


def test_an_exporter_error_is_one_line_and_leaves_no_partial_file(checkpoint, tmp_path, monkeypatch, capsys):
    def half_written(model, example, output, info, **options):
        output.write_bytes(b"half")
        raise RuntimeError("exporter broke\nmany lines of details")

    monkeypatch.setitem(export.EXPORTERS, "exported", half_written)
    with pytest.raises(SystemExit) as exited:
        export.main(["--ckpt", str(checkpoint), "--format", "exported", "--output", str(tmp_path / "m.pt2")])
    assert exited.value.code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == "error: exported export of m.pt2 failed (RuntimeError: exporter broke)"
    assert not any(tmp_path.iterdir())


def test_export_is_importable_with_a_main_and_the_top_level_file_runs_it():
    """``coatnet-export`` points at lightning_modules.export:main; ``python export.py`` stays a thin shim."""
    import subprocess
    import sys

    from conftest import REPO_ROOT, subprocess_env

    shim = (REPO_ROOT / "export.py").read_text()
    assert "from lightning_modules.export import main" in shim and len(shim.splitlines()) < 10
    assert "from bench" not in Path(export.__file__).read_text()  # timing comes from coatnet.timing
    command = [sys.executable, "export.py", "--model", "coatnet_nano", "--output", "x.onnx", "--opset", "30"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 2 and "--opset 30: the ONNX exporter writes opsets 18 to 25" in result.stderr
