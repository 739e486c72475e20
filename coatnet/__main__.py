"""Command line: ``python -m coatnet {convert,summary,list}``.

    python -m coatnet convert --timm-name coatnet_0_rw_224.sw_in1k --input coatnet_0_rw_224.pth \\
        --output coatnet_0_rw_224.safetensors
    python -m coatnet convert --input nano_192x256.pth --output nano_192x256.safetensors --img-size 192 256
    python -m coatnet summary --variant coatnet_0 --img-size 224
    python -m coatnet summary --variant coatnet_0 --set layout=CCCT --set conv.stride_at=1x1
    python -m coatnet summary --variant coatnet_0 --activations --grad-checkpointing 0 1
    python -m coatnet list
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from .arguments import USER_ERROR_EXIT, ImageSize, OneLineErrorParser
from .config_io import config_to_dict
from .convert import (
    TIMM_TO_VARIANT,
    convert_timm_state_dict,
    detect_variant,
    matching_variant,
    timm_config_name,
    timm_config_preprocessing,
    timm_preprocessing,
    variant_for_timm_name,
)
from .errors import CheckpointError
from .hub import HUB_PREFIX, hub_weights_file, is_hub_name
from .model import CoAtNet, create_model, list_models
from .summary import activation_bytes, format_summary, summarize
from .weights import (
    FORMAT,
    check_output_path,
    checked_hub_config,
    is_timm_config,
    load_state_dict_file,
    read_weights_file,
    save_weights,
    weights_summary,
)

# As in lightning_modules/errors.py, which this package cannot import (it never imports Lightning).
TRACEBACK_ENV = "COATNET_TRACEBACK"


def _timm_names(variant: str) -> list[str]:
    return [name for name, v in TIMM_TO_VARIANT.items() if v == variant]


def _convert(args: argparse.Namespace) -> None:
    check_output_path(args.output)  # before the conversion, which takes seconds for the large variants
    state_dict, hub = _timm_weights(args.input)
    detected = hub["timm_name"] if hub else None
    timm_name = args.timm_name or detected or _timm_names(detect_variant(state_dict, args.img_size))[0]
    variant = variant_for_timm_name(timm_name)
    model = _convert_named(state_dict, timm_name, args.img_size)
    preprocessing = hub["preprocessing"] if hub else timm_preprocessing(timm_name)
    where = {"hf_hub": args.input[len(HUB_PREFIX) :]} if hub else {"file": str(Path(args.input).resolve())}
    path = save_weights(args.output, model, preprocessing, {"timm_name": timm_name, **where}, variant=variant)
    params = sum(p.numel() for p in model.parameters())
    meta = {"variant": variant, "config": config_to_dict(model.config), "preprocessing": preprocessing}
    print(f"converted timm {timm_name} ({len(state_dict)} tensors, {params / 1e6:.2f}M parameters) -> {path}")
    print(f"  {weights_summary(meta)}")


def _timm_weights(source: str) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """timm's state dict in ``source`` (a file or ``hf-hub:`` repository) and, for a repository, the timm name
    and preprocessing its config.json states. Weights already in this project's format are refused."""
    if is_hub_name(source):
        config = checked_hub_config(source)
        if not is_timm_config(config):
            raise CheckpointError(f"{source} is already in this project's format: use it directly, "
                                  f"e.g. --model.init_from {source}")  # fmt: skip
        named = {"timm_name": timm_config_name(config), "preprocessing": timm_config_preprocessing(config)}
        return load_state_dict_file(hub_weights_file(source)), named
    state_dict, meta = read_weights_file(source)
    if meta is not None:
        variant = meta.get("variant")
        holding = f", holding {variant} weights" if variant else ""
        name = f"--model.model_name {variant} " if variant else ""
        raise CheckpointError(
            f"{source} is already converted (a {FORMAT} file{holding}): use it directly, "
            f"e.g. {name}--model.init_from {source}"
        )
    return state_dict, None


def _convert_named(state_dict: dict[str, Tensor], timm_name: str, img_size: tuple[int, int] | None) -> CoAtNet:
    """Convert as ``timm_name``; when the weights do not fit it, say which variant they match."""
    try:
        return convert_timm_state_dict(state_dict, timm_name, progress=True, img_size=img_size)
    except CheckpointError as err:
        detected = matching_variant(state_dict, img_size)
        if detected is None:
            raise
        raise CheckpointError(
            f"{err}\nthese weights are {detected} (timm {', '.join(_timm_names(detected))}), not {timm_name}: "
            "leave --timm-name out to detect it"
        ) from None


def config_setting(text: str) -> tuple[list[str], Any]:
    """``conv.stride_at=1x1`` -> (["conv", "stride_at"], "1x1"); values are Python literals where they parse."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. layout=CCCT or conv.stride_at=1x1; got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.split("."), parsed


def overrides_from(settings: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """Nested ``create_model`` keyword arguments from ``--set`` items."""
    overrides: dict[str, Any] = {}
    for path, value in settings:
        node = overrides
        for depth, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                taken = ".".join(path[: depth + 1])
                raise ValueError(f"--set {'.'.join(path)}: {taken} was set to a value, not fields")
        node[path[-1]] = value
    return overrides


def _summary(args: argparse.Namespace) -> None:
    overrides = overrides_from(args.set)
    model = create_model(args.variant, img_size=args.img_size, num_classes=args.num_classes, **overrides)
    checkpointed = args.grad_checkpointing
    model.set_grad_checkpointing(False if checkpointed is None else checkpointed or True)
    activations = activation_bytes(model, model.img_size) if args.activations or checkpointed is not None else None
    print(format_summary(summarize(model, model.img_size), activations))


def _list(args: argparse.Namespace) -> None:
    for variant in list_models():
        timm_names = _timm_names(variant)
        print(f"{variant:24s} {'timm: ' + ', '.join(timm_names) if timm_names else ''}".rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m coatnet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="timm CoAtNet weights -> this project's weights file")
    convert.add_argument("--timm-name", help="e.g. coatnet_0_rw_224.sw_in1k (detected from the weights if left out)")
    convert.add_argument(
        "--input",
        required=True,
        help="timm state dict: .pth/.pt/.bin or .safetensors, or a timm Hub repository: hf-hub:timm/NAME",
    )
    convert.add_argument("--output", required=True, help="weights file to write: .safetensors or .pth")
    convert.add_argument(
        "--img-size",
        type=int,
        nargs="+",
        action=ImageSize,
        metavar="SIDE",
        help="input size to convert for, H W or one side (default: the weights'; "
        "weights made for a non-square input need it)",
    )
    convert.set_defaults(run=_convert)
    summary = commands.add_parser("summary", help="per-stage parameters and multiply-adds")
    summary.add_argument("--variant", required=True, choices=list_models())
    summary.add_argument(
        "--img-size",
        type=int,
        nargs="+",
        action=ImageSize,
        default=(224, 224),
        metavar="SIDE",
        help="input size, H W or one side (default 224)",
    )
    summary.add_argument("--num-classes", type=int, default=1000)
    summary.add_argument(
        "--set",
        type=config_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a CoAtNetConfig field, dotted for nested ones (layout=CCCT, conv.stride_at=1x1); repeatable",
    )
    summary.add_argument(
        "--activations",
        action="store_true",
        help="add the memory a training step keeps for backward, per image (runs the model at batch 1 and 2)",
    )
    summary.add_argument(
        "--grad-checkpointing",
        type=int,
        nargs="*",
        metavar="STAGE",
        help="activations with these stages recomputed in backward (0 = S1 ... 3 = S4; none given: all)",
    )
    summary.set_defaults(run=_summary)
    commands.add_parser("list", help="registered variants and the timm models they import").set_defaults(run=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error (a ValueError, CheckpointError included) is one ``error:`` line and
    exit status 2, as with ``cli.py``. Anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as err:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
