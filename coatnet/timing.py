"""Wall-clock medians of competing runs, shared by ``export.py --benchmark`` and ``bench/``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer around a call measures the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating_medians(
    runs: dict[str, Callable[[], object]], device: torch.device, warmup: int, iters: int, progress: bool = False
) -> dict[str, float]:
    """Median seconds per call of each run after ``warmup`` rounds, calling them in turn so that all see the
    same load, with the device synchronised around each timed call; ``progress`` shows a bar over the rounds."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in tqdm(range(iters), desc="timing " + " vs ".join(runs), unit="round", disable=not progress, leave=False):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
