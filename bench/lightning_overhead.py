"""What the Lightning ``fit`` loop costs on top of the bare training step of the same model and optimizer.

Both loops train ``lightning_modules.ImageClassifier`` on one fixed batch that already lives on the
device, so neither times an input pipeline. The raw loop does only the arithmetic of a step
(mixing/label smoothing, forward, cross-entropy, backward, optimizer step); everything else that
``Trainer.fit`` adds per step (hooks, ``self.log``, the accuracy metric, the LR scheduler, closure
and precision plugin, and the per-step callbacks every ``cli.py`` run has: ``ThroughputLogger``
and ``NanGuard``) counts as overhead. Progress bar, logger and checkpointing are off: they
are I/O choices of a run, not of the loop. Each loop is timed as one block of steps with the
device synchronised only at its two ends, as in a real run, where the CPU queues work ahead of the
GPU: a host sync inside the loop would show up here as overhead. The raw loop is timed before and
after the Lightning loop (its second block needs no warm-up), and the overhead is taken against the
faster of the two, so a machine that warms up or is busier during one block cannot hide overhead.

    python -m bench.lightning_overhead --model coatnet_0 --batch-size 256 --img-size 224 \\
        --precision bf16 --channels-last --device cuda
    python -m bench.lightning_overhead --model coatnet_nano --batch-size 8 --img-size 64 --device cpu \\
        --threads 1 --precision fp32 --warmup 2 --steps 5
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from bench.throughput import (
    AUTOCAST_DTYPES,
    add_run_arguments,
    parse_step_loop_args,
)
from coatnet.timing import synchronize
from lightning_modules.callbacks.throughput import ThroughputLogger
from lightning_modules.classifier import ImageClassifier
from lightning_modules.optim import weight_decay_groups
from lightning_modules.resilience.nan_guard import NanGuard

LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True)
class Settings:
    model: str
    device: torch.device
    batch_size: int
    img_size: int
    num_classes: int
    precision: str
    channels_last: bool
    compile: bool
    warmup: int
    steps: int


class DeviceBatches(L.LightningDataModule):
    """The same device-resident batch, once per step: the loader costs nothing, so only the loop is timed."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def train_dataloader(self) -> RepeatedBatch:
        return RepeatedBatch(synthetic_batch(self.settings), self.settings.warmup + self.settings.steps)


class RepeatedBatch:
    """An iterable of one batch ``length`` times (a plain list would be read as a list of loaders)."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], length: int) -> None:
        self.batch = batch
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return itertools.repeat(self.batch, self.length)


class BlockTimer(L.Callback):
    """Wall time from the end of the warm-up batches to the end of the last batch, synchronised at both ends."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.start: float | None = None
        self.end: float | None = None
        self.batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.batches += 1
        if self.batches == self.warmup or self.batches == trainer.max_steps:
            synchronize(self.device)
            if self.batches == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()


@dataclass(frozen=True)
class LoopTiming:
    label: str
    seconds_per_step: float


def synthetic_batch(settings: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(settings.batch_size, 3, settings.img_size, settings.img_size, generator=generator)
    labels = torch.randint(0, settings.num_classes, (settings.batch_size,), generator=generator)
    return images.to(settings.device), labels.to(settings.device)


def build_module(settings: Settings) -> ImageClassifier:
    """The same initial weights for both loops."""
    torch.manual_seed(0)
    return ImageClassifier(
        model_name=settings.model,
        num_classes=settings.num_classes,
        image_size=(settings.img_size, settings.img_size),
        compile=settings.compile,
        channels_last=settings.channels_last,
    )


def block_seconds(step: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step over ``steps`` consecutive calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def raw_step(settings: Settings) -> Callable[[], None]:
    """The bare step, with the module's own mixer, optimizer and parameter groups."""
    module = build_module(settings).to(settings.device)
    module.setup("fit")  # compiles when asked, as Lightning would
    module.train()
    optimizer = module.optimizer_factory(weight_decay_groups(module.model, module.no_decay))
    scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.precision == "fp16")
    dtype = AUTOCAST_DTYPES[settings.precision]
    images, labels = synthetic_batch(settings)

    def step() -> None:
        with nullcontext() if dtype is None else torch.autocast(settings.device.type, dtype=dtype):
            mixed = module.mixer(images, labels)
            loss = F.cross_entropy(module(mixed.images), mixed.targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_lightning_loop(settings: Settings) -> LoopTiming:
    """``Trainer.fit`` with the template's per-step callbacks, timed over the steps after the warm-up."""
    timer = BlockTimer(settings.device, settings.warmup)
    trainer = L.Trainer(
        accelerator=settings.device.type,
        devices=1,
        precision=LIGHTNING_PRECISION[settings.precision],
        max_steps=settings.warmup + settings.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ThroughputLogger(), NanGuard(), timer],
    )
    trainer.fit(build_module(settings), datamodule=DeviceBatches(settings))
    return LoopTiming("Lightning Trainer.fit", (timer.end - timer.start) / settings.steps)


def format_table(timings: Sequence[LoopTiming], batch_size: int) -> str:
    """One row per timing; the overhead column is relative to the fastest raw timing."""
    raw = min(t.seconds_per_step for t in timings if t.label.startswith("raw"))
    lines = ["| loop | steps/s | ms/step | img/s | overhead vs raw |", "|---|---:|---:|---:|---:|"]
    for timing in timings:
        overhead = 100 * (timing.seconds_per_step / raw - 1)
        lines.append(
            f"| {timing.label} | {1 / timing.seconds_per_step:.2f} | {1000 * timing.seconds_per_step:.1f} | "
            f"{batch_size / timing.seconds_per_step:,.1f} | {overhead:+.1f}% |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    return parse_step_loop_args(parser, argv, warmup=5, steps=30, steps_help="timed steps per loop, as one block")


def main(argv: Sequence[str] | None = None) -> str:
    """Time both loops, print the table and return it."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(
        model=args.model,
        device=torch.device(args.device),
        batch_size=args.batch_size,
        img_size=args.img_size,
        num_classes=args.num_classes,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        warmup=args.warmup,
        steps=args.steps,
    )
    step = raw_step(settings)
    before = block_seconds(step, settings.device, settings.warmup, settings.steps)
    lightning = time_lightning_loop(settings)
    after = block_seconds(step, settings.device, 1, settings.steps)
    timings = [
        LoopTiming("raw PyTorch step, before", before),
        lightning,
        LoopTiming("raw PyTorch step, after", after),
    ]
    table = format_table(timings, settings.batch_size)
    print(
        f"\n{settings.model}, batch {settings.batch_size}, {settings.img_size}px, {settings.precision}, "
        f"{settings.device}\n\n{table}"
    )
    return table


if __name__ == "__main__":
    main()
