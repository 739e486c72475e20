"""Parameter and multiply-add counts, per stage, measured by running the model once.

Counts come from ``torch.utils.flop_counter`` (matmuls, convolutions and attention), so they
follow the code rather than a hand-written formula. One multiply-add = 2 FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


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


def summarize(model: nn.Module, img_size: tuple[int, int], in_chans: int = 3) -> list[StageCount]:
    """Per-part counts (stem, each stage, head) for a CoAtNet at the given input size."""
    parts = {"stem": model.stem, **{f"stage{i + 1}": s for i, s in enumerate(model.stages)}, "head": model.head}
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


def _module_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError("module is not part of the model")


def format_summary(rows: list[StageCount]) -> str:
    """A markdown table of the per-part counts with a total line."""
    lines = ["| part | output | params | MACs |", "|---|---|---|---|"]
    for row in rows:
        shape = "x".join(str(s) for s in row.output_shape[1:])
        lines.append(f"| {row.name} | {shape} | {row.params / 1e6:.2f}M | {row.macs / 1e9:.3f}G |")
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.macs for r in rows)
    lines.append(f"| total | | {total_params / 1e6:.2f}M | {total_macs / 1e9:.3f}G |")
    return "\n".join(lines)
