"""Training and inference throughput of our CoAtNet against timm's, in one process on one device.

Both models see the same synthetic batch (resident on the device), the same precision, memory
format and compile setting. timm runs with its best working attention setting unless told
otherwise: fused SDPA in eager mode, the explicit matmul path when compiled (timm's fused path
with a relative-position bias does not compile for training). A configuration that raises is
reported as ``fails: <error>`` in its cell instead of stopping the run.

    python -m bench.throughput --model coatnet_0 --batch-size 256 --img-size 224 --precision bf16 \\
        --compile --channels-last --device cuda --append-results
    python -m bench.throughput --model coatnet_nano --timm-name coatnet_nano_rw_224 --batch-size 8 \\
        --img-size 64 --device cpu --threads 1 --warmup 1 --iters 3

See bench/README.md for the meaning of every column and how MFU is computed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from coatnet import list_models
from coatnet.timing import alternating_medians

RESULTS_FILE = Path(__file__).with_name("RESULTS.md")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
H100_SXM_BF16_DENSE_TFLOPS = 989.0
ERROR_CHARS = 90


@dataclass(frozen=True)
class Settings:
    """Everything that is the same for every model in one run."""

    device: torch.device
    batch_size: int
    img_size: int
    num_classes: int
    precision: str
    channels_last: bool
    compile: bool
    compile_mode: str | None
    warmup: int
    iters: int
    grad_checkpointing: bool | tuple[int, ...] = False  # all stages, or the indices of those recomputed
    fold_batchnorm: bool = True


@dataclass(frozen=True)
class Candidate:
    """One model to measure; ``build`` returns it on the CPU, in fp32; ``for_inference`` (if any)
    turns the trained model into the one whose inference is timed."""

    label: str
    build: Callable[[], nn.Module]
    ours: bool
    for_inference: Callable[[nn.Module], nn.Module] | None = None


@dataclass(frozen=True)
class Phase:
    """Result of timing training or inference: a rate and peak memory, or the reason it failed."""

    images_per_s: float | None = None
    peak_gib: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Row:
    label: str
    ours: bool
    forward_flops: int
    train: Phase
    infer: Phase


# ----------------------------------------------------------------------------- models


def timm_default_name(model: str) -> str:
    """timm names its 224-pixel CoAtNets ``<ours>_224`` (``coatnet_0`` -> ``coatnet_0_224``)."""
    return f"{model}_224"


def set_timm_fused_attn(model: nn.Module, enabled: bool) -> int:
    """Switch timm's attention layers between SDPA and the explicit matmul path on this model only.

    timm reads its global flag once, when a layer is built, into a per-layer ``fused_attn``
    attribute; setting that attribute is equivalent and does not leak into other models.
    Returns the number of layers switched, so callers can tell the setting took effect.
    """
    layers = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for layer in layers:
        layer.fused_attn = enabled
    return len(layers)


def timm_candidates(name: str, settings: Settings, mode: str) -> list[Candidate]:
    """timm configurations to run: ``auto`` picks fused attention in eager mode and unfused when compiled."""
    import timm

    if name not in timm.list_models(name):
        raise ValueError(f"timm has no model {name!r}; pass --timm-name or --no-timm")
    fused_options = {"on": [True], "off": [False], "both": [True, False], "auto": [not settings.compile]}[mode]

    def builder(fused: bool) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            model = timm.create_model(
                name, pretrained=False, num_classes=settings.num_classes, img_size=settings.img_size
            )
            set_timm_fused_attn(model, fused)
            return model

        return build

    return [
        Candidate(f"timm {name} (fused attn {'on' if fused else 'off'})", builder(fused), ours=False)
        for fused in fused_options
    ]


def our_candidate(name: str, settings: Settings) -> Candidate:
    from coatnet import create_model, fold_batchnorm

    def build() -> nn.Module:
        model = create_model(name, img_size=settings.img_size, num_classes=settings.num_classes)
        model.set_grad_checkpointing(settings.grad_checkpointing)
        return model

    stages, notes = settings.grad_checkpointing, []
    if stages:
        which = "" if stages is True else " " + ", ".join(f"S{i + 1}" for i in stages)
        notes.append(f"grad checkpointing{which}")
    notes += ["BN folded for inference"] if settings.fold_batchnorm else []
    suffix = f" ({', '.join(notes)})" if notes else ""
    for_inference = fold_batchnorm if settings.fold_batchnorm else None
    return Candidate(f"ours {name}{suffix}", build, ours=True, for_inference=for_inference)


# ----------------------------------------------------------------------------- counting


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's flop table lacks the CPU SDPA kernel; it does the same two matmuls as the others."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_flops(model: nn.Module, settings: Settings) -> int:
    """FLOPs (2 per multiply-add) of one single-image forward pass: matmuls, convolutions, attention."""
    counter = FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops},
    )
    was_training = model.training
    model.eval()
    image = torch.zeros(1, 3, settings.img_size, settings.img_size, device=settings.device)
    with counter, torch.no_grad():
        model(image)
    model.train(was_training)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- timing


def autocast(settings: Settings) -> AbstractContextManager:
    dtype = AUTOCAST_DTYPES[settings.precision]
    return nullcontext() if dtype is None else torch.autocast(settings.device.type, dtype=dtype)


def synthetic_batch(settings: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch already on the device, so no input pipeline is timed."""
    generator = torch.Generator().manual_seed(0)
    shape = (settings.batch_size, 3, settings.img_size, settings.img_size)
    images = torch.randn(shape, generator=generator).to(settings.device)
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, settings.num_classes, (settings.batch_size,), generator=generator)
    return images, labels.to(settings.device)


def median_seconds(step: Callable[[], object], settings: Settings) -> float:
    return alternating_medians({"step": step}, settings.device, settings.warmup, settings.iters)["step"]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """CUDA's high-water mark of allocated memory; no comparable per-phase figure exists on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure_train(net: nn.Module, settings: Settings) -> Phase:
    """Forward, cross-entropy, backward and an AdamW step (fused on CUDA), with a loss scaler for fp16."""
    net.train()
    images, labels = synthetic_batch(settings)
    fused = True if settings.device.type == "cuda" else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05, fused=fused)
    scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.precision == "fp16")

    def step() -> None:
        with autocast(settings):
            loss = F.cross_entropy(net(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(settings.device)
    seconds = median_seconds(step, settings)
    return Phase(settings.batch_size / seconds, peak_memory_gib(settings.device))


def measure_infer(net: nn.Module, settings: Settings) -> Phase:
    """Forward pass only, in eval mode without autograd."""
    net.eval()
    images, _ = synthetic_batch(settings)

    def step() -> None:
        with torch.inference_mode(), autocast(settings):
            net(images)

    reset_peak_memory(settings.device)
    seconds = median_seconds(step, settings)
    return Phase(settings.batch_size / seconds, peak_memory_gib(settings.device))


def short_error(error: BaseException) -> str:
    """The root cause's type and first line: compile errors wrap the real one several levels deep."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".replace("|", "/")
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def release(device: torch.device) -> None:
    """Drop compiled graphs and cached blocks so the next phase starts clean."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def guarded(measure: Callable[[nn.Module, Settings], Phase], model: nn.Module, settings: Settings) -> Phase:
    """Run one phase on a fresh (compiled) wrapper; an exception becomes a failed Phase."""
    try:
        net = torch.compile(model, mode=settings.compile_mode) if settings.compile else model
        return measure(net, settings)
    except Exception as error:  # noqa: BLE001 - any failure of a configuration is a result to report
        return Phase(error=f"fails: {short_error(error)}")
    finally:
        model.zero_grad(set_to_none=True)  # a step that failed half-way leaves gradients behind
        release(settings.device)


def benchmark(candidate: Candidate, settings: Settings) -> Row:
    torch.manual_seed(0)
    model = candidate.build().to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    flops = forward_flops(model, settings)
    train = guarded(measure_train, model, settings)
    if candidate.for_inference is not None:
        model = candidate.for_inference(model)  # drops the trained model, so its memory is not counted
    infer = guarded(measure_infer, model, settings)
    del model
    release(settings.device)
    return Row(candidate.label, candidate.ours, flops, train, infer)


# ----------------------------------------------------------------------------- reporting

COLUMNS = (
    "model",
    "train img/s",
    "infer img/s",
    "train peak GiB",
    "infer peak GiB",
    "fwd GFLOP/img",
    "train MFU",
    "infer MFU",
)


def _rate(phase: Phase) -> str:
    return phase.error if phase.error else f"{phase.images_per_s:,.1f}"


def _memory(phase: Phase) -> str:
    return "n/a" if phase.peak_gib is None else f"{phase.peak_gib:.2f}"


def _mfu(phase: Phase, flops_per_image: float, peak_tflops: float | None) -> str:
    if peak_tflops is None or phase.images_per_s is None:
        return "n/a"
    return f"{100 * phase.images_per_s * flops_per_image / (peak_tflops * 1e12):.1f}%"


def _ratio(rows: Sequence[Row], phase: str) -> str:
    """Ours over the fastest timm configuration that ran."""
    ours = [getattr(r, phase).images_per_s for r in rows if r.ours and getattr(r, phase).images_per_s]
    theirs = [getattr(r, phase).images_per_s for r in rows if not r.ours and getattr(r, phase).images_per_s]
    return f"{ours[0] / max(theirs):.2f}x" if ours and theirs else "n/a"


def format_table(rows: Sequence[Row], peak_tflops: float | None) -> str:
    """Markdown table; training MFU counts 3x the forward FLOPs (backward = 2x forward)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    for row in rows:
        cells = [
            row.label,
            _rate(row.train),
            _rate(row.infer),
            _memory(row.train),
            _memory(row.infer),
            f"{row.forward_flops / 1e9:.3f}",
            _mfu(row.train, 3 * row.forward_flops, peak_tflops),
            _mfu(row.infer, row.forward_flops, peak_tflops),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.ours for r in rows) and any(not r.ours for r in rows):
        ratio = ["ratio ours / best timm", _ratio(rows, "train"), _ratio(rows, "infer")]
        lines.append("| " + " | ".join(ratio + [""] * (len(COLUMNS) - len(ratio))) + " |")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    return f"CPU {cpu}, torch threads: {torch.get_num_threads()}"


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def describe(settings: Settings) -> str:
    compiled = f"compiled ({settings.compile_mode or 'default'})" if settings.compile else "eager"
    layout = "channels_last" if settings.channels_last else "contiguous"
    return (
        f"batch {settings.batch_size}, {settings.img_size}px, {settings.precision}, {layout}, {compiled}, "
        f"{settings.num_classes} classes, median of {settings.iters} iterations after {settings.warmup} warm-up"
    )


def results_section(table: str, settings: Settings, argv: Sequence[str]) -> str:
    import timm

    today = datetime.date.today().isoformat()
    versions = f"torch {torch.__version__}, timm {timm.__version__}"
    command = "python -m bench.throughput " + shlex.join(argv)
    return (
        f"\n## {today}: {device_name(settings.device)}\n\n{versions}; {describe(settings)}.\n\n"
        f"```\n{command}\n```\n\n{table}\n"
    )


# ----------------------------------------------------------------------------- command line


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What every benchmark script takes: the model, the batch, precision, layout, compile, device."""
    parser.add_argument(
        "--model", default="coatnet_0", choices=list_models(), metavar="MODEL", help="a name from coatnet.list_models()"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--precision", choices=tuple(AUTOCAST_DTYPES), default="bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model(s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (use 1 on a shared, busy machine)")


def parse_step_loop_args(
    parser: argparse.ArgumentParser, argv: Sequence[str], warmup: int, steps: int, steps_help: str
) -> argparse.Namespace:
    """Add ``--warmup``/``--steps`` (both at least 1) to a parser of scripts that time training steps; parse."""
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps first (compilation happens here)")
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    return args


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--timm-name", help="timm model to compare with (default: <model>_224)")
    parser.add_argument("--no-timm", action="store_true", help="measure our model only")
    parser.add_argument(
        "--timm-fused-attn",
        choices=("auto", "on", "off", "both"),
        default="auto",
        help="timm attention path; auto = fused when eager, unfused when compiled (its best working setting)",
    )
    parser.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        default=None,
    )
    parser.add_argument(
        "--grad-checkpointing",
        type=int,
        nargs="*",
        metavar="STAGE",
        help="recompute our blocks in backward (memory for compute): all stages, or those given (0 = S1 ... 3 = S4)",
    )
    parser.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time our inference with BatchNorm folded into the convolutions (coatnet.fold_batchnorm; default: on)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations per phase (compilation happens here)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per phase; the median is reported")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_SXM_BF16_DENSE_TFLOPS,
        help="device peak for MFU, TFLOP/s (default: H100 SXM dense bf16); ignored on CPU",
    )
    parser.add_argument("--append-results", action="store_true", help=f"append the table to {RESULTS_FILE.name}")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.iters < 1:
        parser.error("--warmup must be >= 0 and --iters >= 1")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        device=torch.device(args.device),
        batch_size=args.batch_size,
        img_size=args.img_size,
        num_classes=args.num_classes,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_mode=args.compile_mode,
        warmup=args.warmup,
        iters=args.iters,
        grad_checkpointing=False if args.grad_checkpointing is None else tuple(args.grad_checkpointing) or True,
        fold_batchnorm=args.fold_bn,
    )


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print the table (and append it to RESULTS.md when asked); return the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from(args)
    candidates = [our_candidate(args.model, settings)]
    if not args.no_timm:
        candidates += timm_candidates(args.timm_name or timm_default_name(args.model), settings, args.timm_fused_attn)
    rows = [benchmark(candidate, settings) for candidate in candidates]
    peak = args.peak_tflops if settings.device.type == "cuda" else None
    table = format_table(rows, peak)
    print(f"\n{device_name(settings.device)}; {describe(settings)}\n\n{table}")
    if args.append_results:
        with RESULTS_FILE.open("a") as results:
            results.write(results_section(table, settings, argv))
    return table


if __name__ == "__main__":
    main()
