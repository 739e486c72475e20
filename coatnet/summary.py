"""Parameter, multiply-add and activation-memory counts, per stage, measured by running the model.

Counts come from ``torch.utils.flop_counter`` (matmuls, convolutions and attention), so they
follow the code rather than a hand-written formula. One multiply-add = 2 FLOPs. Activation memory
is what autograd keeps for the backward pass, seen through ``saved_tensors_hooks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .recompute import frozen_batchnorm_statistics


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash-attention kernel is not in torch's default table; it does the same matmuls."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_OPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@dataclass(frozen=True)
class StageCount:
    name: str
    params: int
    macs: int
    output_shape: tuple[int, ...]


def count_macs(model: nn.Module, img_size: tuple[int, int], in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass on a single image."""
    return sum(stage.macs for stage in summarize(model, img_size, in_chans))


def _parts(model: nn.Module) -> dict[str, nn.Module]:
    return {"stem": model.stem, **{f"stage{i + 1}": s for i, s in enumerate(model.stages)}, "head": model.head}


def summarize(model: nn.Module, img_size: tuple[int, int], in_chans: int = 3) -> list[StageCount]:
    """Per-part counts (stem, each stage, head) for a CoAtNet at the given input size."""
    parts = _parts(model)
    outputs: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, tuple(o.shape)))
        for name, module in parts.items()
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_EXTRA_OPS)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, in_chans, *img_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    by_module = counter.get_flop_counts()
    root = type(model).__name__  # the flop counter names modules from the root's class name
    rows = []
    for name, module in parts.items():
        key = f"{root}.{_module_path(model, module)}"
        flops = sum(by_module.get(key, {}).values())
        params = sum(p.numel() for p in module.parameters())
        rows.append(StageCount(name, params, flops // 2, outputs[name]))
    return rows


def activation_bytes(model: nn.Module, img_size: tuple[int, int], in_chans: int = 3) -> dict[str, int]:
    """Bytes per image that a training forward pass keeps for backward, per part (stem, stages, head).

    Runs the model in train mode, in its own dtype and with its grad-checkpointing setting, at
    batch 1 and 2 on the device of its parameters; the difference is the per-image figure, so
    weights and batch-independent tensors (the dense attention bias) drop out. A storage saved by
    several ops counts once, in the part that saved it first. Running statistics are left as they
    were. Compiled models save other tensors: this is the eager figure.
    """
    parts = _parts(model)
    device = next(model.parameters()).device
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_per_part(batch: int) -> dict[str, int]:
        current = ["stem"]
        saved: dict[int, tuple[str, int]] = {}  # storage address -> (part that saved it first, bytes)

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved.setdefault(storage.data_ptr(), (current[0], storage.nbytes()))
            # Kept alive (no address reuse while counting) but detached: the tensor itself would tie
            # its grad_fn to the graph that saves it, a cycle that is never freed.
            return tensor.detach()

        hooks = [
            module.register_forward_pre_hook(lambda m, args, name=name: current.__setitem__(0, name))
            for name, module in parts.items()
        ]
        try:
            keep = saved_tensors_hooks(pack, lambda tensor: tensor)
            with keep, torch.enable_grad(), frozen_batchnorm_statistics(model):
                model(torch.randn(batch, in_chans, *img_size, device=device))
        finally:
            for hook in hooks:
                hook.remove()
        return {name: sum(size for part, size in saved.values() if part == name) for name in parts}

    was_training = model.training
    model.train()
    try:
        one, two = saved_per_part(1), saved_per_part(2)
    finally:
        model.train(was_training)
    return {name: two[name] - one[name] for name in parts}


def _module_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError("module is not part of the model")


def format_summary(rows: list[StageCount], activations: dict[str, int] | None = None) -> str:
    """A markdown table of the per-part counts with a total line; ``activations`` adds a column."""
    header = "| part | output | params | MACs |" + (" train activations / image |" if activations else "")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for row in rows:
        shape = "x".join(str(s) for s in row.output_shape[1:])
        cells = f"| {row.name} | {shape} | {row.params / 1e6:.2f}M | {row.macs / 1e9:.3f}G |"
        lines.append(cells + (f" {activations[row.name] / 2**20:.2f} MiB |" if activations else ""))
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.macs for r in rows)
    total = f"| total | | {total_params / 1e6:.2f}M | {total_macs / 1e9:.3f}G |"
    lines.append(total + (f" {sum(activations.values()) / 2**20:.2f} MiB |" if activations else ""))
    return "\n".join(lines)
