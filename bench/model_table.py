"""Print the variants table (parameters and multiply-adds) that the README shows.

    python -m bench.model_table --img-size 224
"""

from __future__ import annotations

import argparse

import torch

from coatnet import create_model, list_models
from coatnet.summary import count_macs


def variant_row(name: str, img_size: int, num_classes: int) -> str:
    """One markdown row: name, layout, depths, widths, params, MACs."""
    model = create_model(name, img_size=img_size, num_classes=num_classes)
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, cfg.img_size)
    return (
        f"| `{name}` | {cfg.layout} | {','.join(map(str, cfg.depths))} | {','.join(map(str, cfg.widths))} "
        f"| {params:,} | {macs / 1e9:.2f}G |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--variants", nargs="*", default=None, help="default: every registered variant")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    print(f"At {args.img_size}x{args.img_size}, {args.num_classes} classes; MACs of one image.\n")
    print("| variant | layout | depths S1-S4 | widths S1-S4 | params | MACs |")
    print("|---|---|---|---|---|---|")
    for name in args.variants or list_models():
        print(variant_row(name, args.img_size, args.num_classes), flush=True)


if __name__ == "__main__":
    main()
