"""Print the variants table (parameters, multiply-adds, training activation memory) that the README shows.

python -m bench.model_table --img-size 224
"""

from __future__ import annotations

import argparse

import torch

from coatnet import create_model, list_models
from coatnet.summary import activation_bytes, count_macs

HEADER = "| variant | layout | depths S1-S4 | widths S1-S4 | params | MACs | train activations / image |"


def variant_row(name: str, img_size: int, num_classes: int) -> str:
    """One markdown row: name, layout, depths, widths, params, MACs, float32 activations kept for backward."""
    model = create_model(name, img_size=img_size, num_classes=num_classes)
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        macs = count_macs(model, cfg.img_size)
    activations = sum(activation_bytes(model, cfg.img_size).values())
    return (
        f"| `{name}` | {cfg.layout} | {','.join(map(str, cfg.depths))} | {','.join(map(str, cfg.widths))} "
        f"| {params:,} | {macs / 1e9:.2f}G | {activations / 2**20:,.0f} MiB |"
    )


def main(argv: list[str] | None = None) -> str:
    """Print the table and return it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--variants",
        nargs="*",
        default=None,
        choices=list_models(),
        metavar="VARIANT",
        help="default: every registered variant",
    )
    args = parser.parse_args(argv)
    print(f"At {args.img_size}x{args.img_size}, {args.num_classes} classes; MACs of one image; float32 activations.\n")
    lines = [HEADER, "|---" * (HEADER.count("|") - 1) + "|"]
    print("\n".join(lines))
    for name in args.variants or list_models():
        lines.append(variant_row(name, args.img_size, args.num_classes))
        print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
