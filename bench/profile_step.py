"""Where one training step of our CoAtNet spends its time: per stage (forward and backward) and per kernel.

Times every stage (stem, S1..S4, head) with device events placed by module hooks, forward and
backward, then runs a few steps under ``torch.profiler`` and lists the operators that take the most
device time. Optimisation starts here: the stage table says where, the operator table says what.

    python -m bench.profile_step --model coatnet_0 --batch-size 256 --img-size 224 --precision bf16 \\
        --channels-last --device cuda --trace step.json
    python -m bench.profile_step --model coatnet_nano --batch-size 4 --img-size 64 --precision fp32 --device cpu

Stage times need an eager model (hooks do not see inside a compiled graph); ``--compile`` profiles
the compiled step's operators only. Open ``--trace`` files in https://ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.throughput import (
    Settings,
    add_run_arguments,
    autocast,
    parse_step_loop_args,
    synthetic_batch,
)
from coatnet.timing import synchronize

TOP_OPERATORS = 25


class Stamp:
    """A point in device time: a CUDA event on GPUs, the wall clock (after the op ran) elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.event = torch.cuda.Event(enable_timing=True) if device.type == "cuda" else None
        self.seconds = 0.0

    def record(self) -> None:
        if self.event is not None:
            self.event.record()
        else:
            self.seconds = time.perf_counter()

    def ms_until(self, later: Stamp) -> float:
        if self.event is not None:
            return self.event.elapsed_time(later.event)
        return 1000 * (later.seconds - self.seconds)


@dataclass
class StageClock:
    """Start/end stamps of one module's forward and backward in one step."""

    name: str
    forward: tuple[Stamp, Stamp]
    backward: tuple[Stamp, Stamp]


def named_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """stem, S1..S4, head: the parts a CoAtNet runs in order."""
    return [("stem", model.stem), *[(f"S{i + 1}", s) for i, s in enumerate(model.stages)], ("head", model.head)]


def attach_clocks(model: nn.Module, device: torch.device) -> tuple[list[StageClock], Callable[[], None]]:
    """Hooks that stamp each stage's forward and backward; returns the clocks and a function removing the hooks."""
    clocks, handles = [], []
    for name, module in named_stages(model):
        clock = StageClock(name, (Stamp(device), Stamp(device)), (Stamp(device), Stamp(device)))
        handles += [
            module.register_forward_pre_hook(lambda *_, c=clock: c.forward[0].record()),
            module.register_forward_hook(lambda *_, c=clock: c.forward[1].record()),
            module.register_full_backward_pre_hook(lambda *_, c=clock: c.backward[0].record()),
            module.register_full_backward_hook(lambda *_, c=clock: c.backward[1].record()),
        ]
        clocks.append(clock)
    return clocks, lambda: [handle.remove() for handle in handles]


def training_step(model: nn.Module, settings: Settings) -> Callable[[], None]:
    """Forward, cross-entropy, backward and an AdamW step on a fixed device-resident batch."""
    images, labels = synthetic_batch(settings)
    images.requires_grad_(True)  # so the stem's backward hooks fire too; costs one small extra gradient
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if settings.device.type == "cuda" else None)

    def step() -> None:
        with autocast(settings):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def stage_table(model: nn.Module, settings: Settings) -> str:
    """Mean forward and backward milliseconds per stage over ``iters`` steps."""
    step = training_step(model, settings)
    for _ in range(settings.warmup):
        step()
    clocks, remove = attach_clocks(model, settings.device)
    totals = {clock.name: [0.0, 0.0] for clock in clocks}
    for _ in range(settings.iters):
        step()
        synchronize(settings.device)
        for clock in clocks:
            totals[clock.name][0] += clock.forward[0].ms_until(clock.forward[1])
            totals[clock.name][1] += clock.backward[0].ms_until(clock.backward[1])
    remove()
    rows = {name: (fwd / settings.iters, bwd / settings.iters) for name, (fwd, bwd) in totals.items()}
    whole = sum(f + b for f, b in rows.values())
    lines = ["| stage | forward ms | backward ms | share of fwd+bwd |", "|---|---:|---:|---:|"]
    for name, (fwd, bwd) in rows.items():
        lines.append(f"| {name} | {fwd:.2f} | {bwd:.2f} | {100 * (fwd + bwd) / whole:.1f}% |")
    return "\n".join(lines)


def operator_table(model: nn.Module, settings: Settings, trace: Path | None) -> str:
    """The operators with the most self device time per step (CPU time on a CPU)."""
    step = training_step(model, settings)
    for _ in range(settings.warmup):
        step()
    synchronize(settings.device)
    on_cuda = settings.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(settings.iters):
            step()
        synchronize(settings.device)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    lines = ["| operator | calls/step | self ms/step | share |", "|---|---:|---:|---:|"]
    for event in events[:TOP_OPERATORS]:
        spent = getattr(event, key)
        name = event.key.replace("|", "/")[:80]
        lines.append(
            f"| {name} | {event.count / settings.iters:.0f} | {spent / 1000 / settings.iters:.2f} "
            f"| {100 * spent / total:.1f}% |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)  # with --compile only the operator table: hooks do not see into a compiled graph
    parser.add_argument("--trace", type=Path, help="write a Chrome/Perfetto trace of the profiled steps here")
    return parse_step_loop_args(parser, argv, warmup=3, steps=5, steps_help="measured steps")


def main(argv: Sequence[str] | None = None) -> str:
    """Print (and return) the stage table (eager only) and the operator table."""
    from coatnet import create_model

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(
        device=torch.device(args.device),
        batch_size=args.batch_size,
        img_size=args.img_size,
        num_classes=args.num_classes,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_mode=None,
        warmup=args.warmup,
        iters=args.steps,
    )
    torch.manual_seed(0)
    model = create_model(args.model, img_size=args.img_size, num_classes=args.num_classes).to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    header = (
        f"{args.model}, batch {args.batch_size}, {args.img_size}px, {args.precision}, "
        f"{'channels_last' if args.channels_last else 'contiguous'}, {'compiled' if args.compile else 'eager'}, "
        f"{settings.device}"
    )
    sections = [header]
    if not args.compile:
        sections.append(
            "Per stage (device time between hook stamps, mean of the measured steps):\n\n"
            + stage_table(model, settings)
        )
    profiled = torch.compile(model) if args.compile else model
    sections.append(f"Top {TOP_OPERATORS} operators by self time:\n\n" + operator_table(profiled, settings, args.trace))
    report = "\n\n".join(sections)
    print(report)
    return report


if __name__ == "__main__":
    main()
