"""What folding BatchNorm into the adjacent convolutions (``coatnet.fold_batchnorm``) gains at inference.

The model as trained (eval mode) and its folded copy run the same fixed device-resident batch
under ``torch.inference_mode``, timed alternately, one forward each in turn, so that load from other
processes falls on both alike. The table gives the median img/s of each, the BatchNorm layers left,
and the largest logit difference between the two (float rounding only).

    python -m bench.fold_batchnorm --model coatnet_0 --batch-size 256 --img-size 224 --precision bf16 \\
        --channels-last --compile --device cuda
    python -m bench.fold_batchnorm --model coatnet_0 --batch-size 8 --img-size 224 --precision fp32 \\
        --channels-last --device cpu --threads 1 --iters 11
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bench.throughput import (
    AUTOCAST_DTYPES,
    add_run_arguments,
    device_name,
)
from coatnet import create_model, fold_batchnorm
from coatnet.timing import alternating_medians

COLUMNS = ("model", "as trained img/s", "BN folded img/s", "speed-up", "BatchNorms", "max abs logit diff")


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each (compilation happens here)")
    parser.add_argument("--iters", type=int, default=20, help="timed calls of each; the median is reported")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.iters < 1:
        parser.error("--warmup must be >= 0 and --iters >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Time both, print the table and return it."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(args.model, img_size=args.img_size, num_classes=args.num_classes).eval()
    model = model.to(device, memory_format=memory_format)
    folded = fold_batchnorm(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator)
    images = images.to(device).contiguous(memory_format=memory_format)
    dtype = AUTOCAST_DTYPES[args.precision]

    def forward(net: nn.Module) -> Callable[[], torch.Tensor]:
        net = torch.compile(net) if args.compile else net

        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return net(images)

        return run

    runs = {"trained": forward(model), "folded": forward(folded)}
    seconds = alternating_medians(runs, device, args.warmup, args.iters)
    difference = (runs["trained"]().float() - runs["folded"]().float()).abs().max().item()
    rate = {name: args.batch_size / value for name, value in seconds.items()}
    layout = "channels_last" if args.channels_last else "contiguous"
    mode = "compiled" if args.compile else "eager"
    cells = [
        args.model,
        f"{rate['trained']:,.1f}",
        f"{rate['folded']:,.1f}",
        f"{rate['folded'] / rate['trained']:.2f}x",
        f"{batchnorms(model)} -> {batchnorms(folded)}",
        f"{difference:.1e}",
    ]
    header = ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    table = "\n".join([*header, "| " + " | ".join(cells) + " |"])
    print(
        f"\n{device_name(device)}; batch {args.batch_size}, {args.img_size}px, {args.precision}, {layout}, {mode}, "
        f"median of {args.iters} alternating calls after {args.warmup} warm-up\n\n{table}"
    )
    return table


if __name__ == "__main__":
    main()
