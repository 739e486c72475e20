"""Export a trained CoAtNet to ONNX, TorchScript or ``torch.export``, check parity, time CPU inference.

    python export.py --ckpt logs/smoke/version_0/checkpoints/last.ckpt --format onnx --output model.onnx --check
    python export.py --ckpt coatnet_0_rw_224.safetensors --output c0_rw.onnx   # a ``python -m coatnet convert`` file
    python export.py --ckpt hf-hub:timm/coatnet_0_rw_224.sw_in1k --output c0_rw.onnx   # downloaded and converted
    python export.py --model coatnet_0 --image-size 224 --format onnx --output c0.onnx --check --benchmark
    python export.py --ckpt RUN.ckpt --format safetensors --output my_model [--push-to-hub ORG/NAME]   # to share

``export.py`` at the top of a clone runs this module, as does the ``coatnet-export`` command when installed.

The exported graph takes normalised float32 images ``[B, 3, H, W]`` (B is dynamic, H x W is the
training size) and returns logits. BatchNorm is folded into the adjacent convolutions first
(``coatnet.fold_batchnorm``; ``--no-fold-bn`` exports the layers as trained); ``--check`` compares
the file with the unfolded eager model. The checkpoint's class names and preprocessing (``data_info``:
mean/std, resize mode, crop_pct, interpolation) are embedded: ONNX ``metadata_props`` keys, or a
``data_info.json`` extra file in TorchScript / ``.pt2`` archives. ``--format safetensors`` writes a folder of
weights, config and model card instead (``lightning_modules/weights_pack.py``), for ``--model.init_from``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from coatnet import CoAtNet, create_model, fold_batchnorm
from coatnet.arguments import OneLineErrorParser, non_negative_float, positive_int
from coatnet.errors import CheckpointError, first_line
from coatnet.hub import WEIGHTS_FILES, is_hub_name
from coatnet.timing import alternating_medians
from coatnet.weights import (
    FORMAT,
    load_mapped,
    load_weights,
    read_safetensors_metadata,
    read_torch_file,
)
from lightning_modules.model_overrides import network_config
from lightning_modules.user_errors import exit_readably
from lightning_modules.weights_pack import pack, push_to_hub

Format = Literal["onnx", "torchscript", "exported", "safetensors"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported", "safetensors")
OPSET = 18  # the oldest the dynamo exporter writes; it cannot convert this model down to 17
# The newest it writes: it exports at 18 and converts up with onnxscript's version converter, whose limit this is
# (a test keeps them equal). Above it the conversion fails with a printed traceback and leaves a model declaring
# opset 18 that holds newer operators, which onnxruntime refuses.
MAX_OPSET = 25
MAX_BATCH = 1024
DEFAULT_SIZE, DEFAULT_CLASSES = 224, 1000  # of a --model; a checkpoint has its own


class ExportFailed(ValueError):
    """The exporter failed or wrote a file that is not what was asked for: nothing is left at ``--output``."""


class MissingExtra(ImportError, ValueError):
    """An optional dependency that is not installed: a user error (exit 2), still an ImportError to callers."""


def require_export_extra(*modules: str, purpose: str) -> None:
    """Fail early, naming the ``export`` extra, when a module it provides is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f'{purpose} needs {", ".join(missing)}, in the export extra: pip install -e ".[export]"')


def check_export_extra(args: argparse.Namespace) -> None:
    """Before anything is loaded: ONNX export needs onnx and onnxscript, --check and --benchmark onnxruntime too."""
    if args.format != "onnx":
        return
    runs = args.check or args.benchmark
    purpose = "ONNX export with --check or --benchmark" if runs else "ONNX export"
    require_export_extra("onnx", "onnxscript", *(["onnxruntime"] if runs else []), purpose=purpose)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode CoAtNet in a Lightning checkpoint of ``ImageClassifier`` or in a weights file of
    this project (``python -m coatnet convert``, ``save_weights``, an ``hf-hub:`` repository), and its ``data_info``.

    Both record the network's config, so neither the LightningModule nor its optimizer settings are
    needed. A bare state dict (timm's, or ``torch.save(model.state_dict())``) records none: refused.
    """
    if is_hub_name(path) or Path(path).is_dir():  # a Hub repository, or a folder of --format safetensors
        return _from_weights_file(path)
    path = Path(path)
    if path.suffix == ".safetensors":
        is_weights_file = read_safetensors_metadata(path).get("format") == FORMAT
    else:
        state = read_torch_file(path)
        if isinstance(state, Mapping) and "hyper_parameters" in state:
            return _from_lightning_checkpoint(state, path)
        is_weights_file = isinstance(state, Mapping) and state.get("format") == FORMAT
    if not is_weights_file:
        raise CheckpointError(
            f"{path} holds plain weights (a state dict without the model's config), not a Lightning checkpoint "
            f"or a weights file of this project. For timm weights run `python -m coatnet convert --input {path} "
            f"--output {path.stem}.safetensors` and pass that file to --ckpt; otherwise fine-tune from them "
            f"(`python cli.py fit ... --model.init_from {path}`) and export the checkpoint"
        )
    return _from_weights_file(path)


def _from_lightning_checkpoint(state: Mapping[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilt from the hyper-parameters the way ``ImageClassifier.build_model`` does."""
    hp = state["hyper_parameters"]
    if not isinstance(hp, Mapping) or "model_name" not in hp:
        raise CheckpointError(
            f"{path} is a Lightning checkpoint of another LightningModule (its hyper-parameters name no "
            "model_name): pass a checkpoint written by `python cli.py fit`"
        )
    model = CoAtNet(network_config(hp))
    weights = {k[len("model.") :]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    load_mapped(model, weights, str(path))
    info = state.get("data_info") or {"image_size": list(hp["image_size"])}
    return model.eval(), info


def _from_weights_file(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """The model and its recorded preprocessing and class names, as ``data_info``."""
    model, meta = load_weights(path)
    info = {"image_size": list(model.img_size), **meta["preprocessing"]}
    for key in ("variant", "class_names"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    return model, info


def check_output(path: Path, fmt: Format = "onnx") -> None:
    """The output's folder exists (created if needed) and takes files; checked first, so that a bad
    ``--output`` is not found only after loading and exporting the model. ``safetensors`` writes a folder."""
    if fmt == "safetensors":
        if path.exists() and not path.is_dir():
            raise ValueError(f"--output {path} is a file: --format safetensors writes a folder; name a new one")
        path = path / WEIGHTS_FILES[0]
    elif path.is_dir():
        raise ValueError(f"--output {path} is a folder: name the file to write, e.g. {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write {path}: the output folder {path.parent} cannot be created or is not writable "
            f"({err.strerror}); choose another --output"
        ) from None


def check_model_options(args: argparse.Namespace, model: nn.Module) -> None:
    """``--image-size`` and ``--num-classes`` describe a ``--model``; a checkpoint keeps what it was trained with.

    Another size is refused rather than honoured: interpolated relative-position tables lose accuracy
    until fine-tuned at the new size, and ``--check`` (parity with eager) would not show it.
    """
    height, width = model.config.img_size
    if args.image_size is not None and (args.image_size, args.image_size) != (height, width):
        raise ValueError(
            f"--image-size {args.image_size}: {args.ckpt} was trained at {height}x{width} and is exported at that "
            f"size. Leave --image-size out, or fine-tune at {args.image_size} first (--model.init_from "
            f"{args.ckpt}, as in configs/finetune_384.yaml) and export that checkpoint"
        )
    if args.num_classes is not None and args.num_classes != model.config.num_classes:
        raise ValueError(
            f"--num-classes {args.num_classes}: {args.ckpt} has {model.config.num_classes} classes; "
            "leave --num-classes out (it sets the classes of a --model)"
        )


def example_input(info: dict[str, Any], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random normalised images of the model's input size (seeded, so checks are repeatable)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *info["image_size"], generator=generator)


def export_onnx(
    model: nn.Module, example: torch.Tensor, output: Path, info: dict[str, Any], opset: int = OPSET
) -> None:
    """ONNX with a dynamic batch axis, ``images`` -> ``logits``; ``data_info`` entries become metadata.

    Uses the dynamo exporter (``torch.export``, then onnxscript's torchlib). The relative-position
    bias becomes a constant Gather of the learned table.
    """
    require_export_extra("onnx", "onnxscript", purpose="ONNX export")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    for key, value in info.items():
        program.model.metadata_props[key] = json.dumps(value)
    program.save(str(output))


def export_torchscript(model: nn.Module, example: torch.Tensor, output: Path, info: dict[str, Any]) -> None:
    """``torch.jit.trace``; the traced graph keeps the batch size symbolic. Deprecated by PyTorch (it warns)."""
    with torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)  # --check compares outputs instead
        torch.jit.save(traced, str(output), _extra_files={"data_info.json": json.dumps(info)})


def export_program(model: nn.Module, example: torch.Tensor, output: Path, info: dict[str, Any]) -> None:
    """``torch.export`` to a ``.pt2`` archive (name the output ``*.pt2``) with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(output), extra_files={"data_info.json": json.dumps(info)})


def export_to(fmt: Format, model: nn.Module, output: Path, info: dict[str, Any], **options: Any) -> None:
    """Export under a temporary name beside ``output`` and rename it once it is checked: a failed export leaves
    nothing, and never a file that looks finished."""
    tmp = output.with_name(f".{output.stem}.{secrets.token_hex(4)}.tmp{output.suffix}")
    try:
        try:
            EXPORTERS[fmt](model, example_input(info), tmp, info, **options)
        except Exception as err:
            raise ExportFailed(f"{fmt} export of {output.name} failed ({first_line(err)})") from err
        if fmt == "onnx":
            check_onnx_opset(tmp, options.get("opset", OPSET), output)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def check_onnx_opset(path: Path, opset: int, output: Path) -> None:
    """The file declares the opset asked for (when onnxscript's version conversion fails, torch.onnx prints the
    error and keeps the opset it started from, with operators of the one asked for)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises protobuf's DecodeError, among others, for a file it cannot parse
        raise ExportFailed(f"ONNX export of {output.name} failed: the file is unreadable ({first_line(err)})") from err
    declared = max((op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), default=None)
    if declared != opset:
        raise ExportFailed(
            f"ONNX export of {output.name} failed: the converter wrote opset {declared}, not --opset {opset}; "
            f"use an opset from {OPSET} to {MAX_OPSET}"
        )


EXPORTERS: dict[str, Callable[..., None]] = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
    "exported": export_program,
}


def load_exported(path: Path, fmt: Format) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function running the exported file on a CPU tensor and returning a CPU tensor."""
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    return lambda x: module(x)


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimisations (``threads`` intra-op threads)."""
    require_export_extra("onnxruntime", purpose="running an ONNX file")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(model: nn.Module, path: Path, fmt: Format, inputs: torch.Tensor) -> float:
    """Largest absolute logit difference between eager PyTorch and the exported file."""
    run = load_exported(path, fmt)
    with torch.no_grad():
        return float((run(inputs) - model(inputs)).abs().max())


def benchmark(
    model: nn.Module, onnx_path: Path, info: dict[str, Any], runs: int = 30, warmup: int = 5
) -> dict[str, float]:
    """Median CPU milliseconds per image at batch 1: eager PyTorch vs onnxruntime, same thread count.

    The two are timed alternately, run by run, so that load from other processes hits both alike.
    """
    threads = torch.get_num_threads()
    image = example_input(info, batch=1)
    session = onnx_session(onnx_path, threads)
    feed = {"images": image.numpy()}
    candidates = {"eager_ms": lambda: model(image), "onnxruntime_ms": lambda: session.run(None, feed)}
    with torch.inference_mode():
        seconds = alternating_medians(candidates, torch.device("cpu"), warmup, runs, progress=True)
    result = {name: 1000 * value for name, value in seconds.items()}
    return {"threads": threads, **result, "speedup": result["eager_ms"] / result["onnxruntime_ms"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(description="Export a CoAtNet checkpoint (see the module docstring).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ckpt",
        help="Lightning checkpoint of ImageClassifier, a weights file of `python -m coatnet convert`, a folder of "
        "--format safetensors, or a Hub repository (hf-hub:ORG/NAME)",
    )
    source.add_argument("--model", help="or a randomly initialised variant, e.g. coatnet_0 (for timing)")
    parser.add_argument("--image-size", type=int, help=f"input side with --model (default {DEFAULT_SIZE})")
    parser.add_argument("--num-classes", type=int, help=f"classes with --model (default {DEFAULT_CLASSES})")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help="onnx (default), exported (a torch.export .pt2), torchscript (deprecated by PyTorch: torch.jit "
        "warns), safetensors (a folder of weights, config.json and model card to share: --output names the folder)",
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, {OPSET} to {MAX_OPSET}")
    parser.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the adjacent convolutions before export (default: on)",
    )
    parser.add_argument("--check", action="store_true", help="compare outputs with PyTorch on random inputs")
    parser.add_argument(
        "--atol", type=non_negative_float, default=1e-4, help="allowed absolute logit difference for --check"
    )
    parser.add_argument("--benchmark", action="store_true", help="CPU latency at batch 1 vs eager (ONNX only)")
    parser.add_argument("--runs", type=positive_int, default=30, help="timed runs for --benchmark")
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="with --format safetensors: upload the folder to this Hub repository (created if needed)",
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    args = parser.parse_args(argv)
    if args.format == "safetensors" and (args.check or args.benchmark or args.model):
        parser.error("--format safetensors packs the weights of --ckpt as trained: no --model, --check or --benchmark")
    if args.push_to_hub and args.format != "safetensors":
        parser.error("--push-to-hub uploads a packed folder: use --format safetensors")
    if args.benchmark and args.format != "onnx":
        parser.error("--benchmark times onnxruntime: use --format onnx")
    if not OPSET <= args.opset <= MAX_OPSET:
        parser.error(f"--opset {args.opset}: the ONNX exporter writes opsets {OPSET} to {MAX_OPSET}")
    return args


def run(argv: list[str] | None = None) -> int:
    """Export, then optionally check and time; returns the exit status (1 when --check fails)."""
    args = parse_args(argv)
    check_export_extra(args)
    check_output(args.output, args.format)
    if args.ckpt:
        model, info = load_checkpoint(args.ckpt)
        check_model_options(args, model)
    else:
        size = (DEFAULT_SIZE if args.image_size is None else args.image_size,) * 2
        classes = DEFAULT_CLASSES if args.num_classes is None else args.num_classes
        model = create_model(args.model, num_classes=classes, img_size=size).eval()
        info = {"image_size": list(size)}
    if args.format == "safetensors":
        return _pack(args, model, info, argv)
    extra = {"opset": args.opset} if args.format == "onnx" else {}
    to_export = fold_batchnorm(model) if args.fold_bn else model
    export_to(args.format, to_export, args.output, info, **extra)
    print(f"wrote {args.output} ({args.output.stat().st_size / 2**20:.1f} MiB)")
    status = 0
    if args.check:
        diff = max_abs_diff(model, args.output, args.format, example_input(info, batch=3, seed=1))
        ok = diff <= args.atol
        print(f"parity: max |exported - eager| = {diff:.2e} ({'ok' if ok else 'FAILED'}, atol {args.atol:g})")
        status = 0 if ok else 1
    if args.benchmark:
        result = benchmark(model, args.output, info, runs=args.runs)
        print(
            f"batch 1, {result['threads']} threads: eager {result['eager_ms']:.1f} ms/image, "
            f"onnxruntime {result['onnxruntime_ms']:.1f} ms/image ({result['speedup']:.2f}x)"
        )
    return status


def _pack(args: argparse.Namespace, model: nn.Module, info: dict[str, Any], argv: list[str] | None) -> int:
    """``--format safetensors``: the folder of weights, config.json and model card; uploaded with --push-to-hub."""
    command = "python export.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    folder = pack(model, info, args.ckpt, args.output, command, repo_id=args.push_to_hub)
    print(f"wrote {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))))
    print(f"  fine-tune from it: --model.init_from {folder}")
    if args.push_to_hub:
        url = push_to_hub(folder, args.push_to_hub, private=args.private)
        print(f"uploaded to {url}; fine-tune from it: --model.init_from hf-hub:{args.push_to_hub}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """:func:`run` with user errors as one ``error:`` line and exit status 2 (``COATNET_TRACEBACK=1``: traceback)."""
    exit_readably(lambda: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
