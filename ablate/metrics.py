"""What a finished run measured, read from its folder: event-file scalars and the checkpoint's network."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.scalars import read_scalars
from coatnet import CoAtNet
from coatnet.summary import summarize
from lightning_modules.model_overrides import network_config

ACCURACY_TAG = "val/acc1"
THROUGHPUT_TAG = "train/images_per_sec"


@dataclass(frozen=True)
class NetworkSize:
    params: int
    flops: int  # of one forward pass on one image, 2 FLOPs per multiply-add


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    try:
        return read_scalars(run_dir)
    except FileNotFoundError:  # the fit has not written its first event file yet
        return {}


def epoch_accuracies(run_dir: Path) -> dict[int, float]:
    """Epoch -> ``val/acc1``; Lightning logs ``epoch`` at the step of every validation result."""
    series = _scalars(run_dir)
    epoch_at_step = dict(series.get("epoch", []))
    points = series.get(ACCURACY_TAG, [])
    return {int(epoch_at_step.get(step, index)): value for index, (step, value) in enumerate(points)}


def best_accuracy(run_dir: Path) -> float | None:
    values = epoch_accuracies(run_dir).values()
    return max(values) if values else None


def median_throughput(run_dir: Path) -> float | None:
    """Median ``train/images_per_sec``: robust to the slow windows around validation and start-up."""
    values = [value for _, value in _scalars(run_dir).get(THROUGHPUT_TAG, [])]
    return statistics.median(values) if values else None


def network_size(run_dir: Path) -> NetworkSize | None:
    """Parameters and forward FLOPs of the network the run's ``last.ckpt`` was trained as (None: no checkpoint)."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        return None
    saved = torch.load(checkpoint, map_location="meta", weights_only=False)
    config = network_config(saved["hyper_parameters"])
    model = CoAtNet(config)
    parts = summarize(model, config.img_size, config.in_chans)
    return NetworkSize(sum(p.numel() for p in model.parameters()), 2 * sum(part.macs for part in parts))
