"""Training throughput: images per second and, on CUDA GPUs, model FLOPs utilisation (MFU).

Lightning's ``ThroughputMonitor`` needs a ``batch_size_fn`` callable, which cannot be written in
a YAML config, so this is a small callback of our own built on the same fabric utilities.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

from lightning_modules.hparam_ranges import PositiveInt, check_ranges
from lightning_modules.steps import split_batch


def training_flops_per_image(pl_module: LightningModule) -> int:
    """Model FLOPs of one training image: 3x the forward count (backward = 2x forward, the usual MFU rule).

    The forward pass is counted on a meta-device copy (no memory, no compute). Counting the backward
    directly is avoided: torch's counter over-reports depthwise ``convolution_backward`` (more than
    10x the forward convolutions on CoAtNet-0), which would inflate MFU.
    """
    with torch.device("meta"):
        model = pl_module.build_model(load_weights=False)
        images = torch.empty(1, 3, *pl_module.image_size)
    return 3 * measure_flops(model, lambda: model(images))


class ThroughputLogger(Callback):
    """Logs ``train/images_per_sec`` (all devices together) and ``train/mfu`` (CUDA only).

    The rate is averaged over ``window`` training batches, timed between batch ends so that data
    loading, forward, backward and the optimizer step are all included. The device is synchronised
    only at the edges of a window, so the CPU keeps queueing work ahead of the GPU in between.
    Timing restarts after every validation run, and the first window of a fit (compilation,
    autotuning) is not logged.
    """

    def __init__(self, window: PositiveInt = 20) -> None:
        check_ranges(ThroughputLogger.__init__, locals())  # the CLI's parser checks it too (throughput.window)
        self.window = window
        self._t0: float | None = None
        self._batches = 0
        self._images = 0
        self._warm = False
        self._flops_per_image: int | None = None
        self._peak_flops: int | None = None

    @staticmethod
    def _now(trainer: Trainer) -> float:
        """Wall time once the device has caught up: only at window edges, so the CPU may run ahead in between."""
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._warm = False
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self._peak_flops = get_available_flops(device, _plugin_to_compute_dtype(trainer.precision_plugin))
            self._flops_per_image = training_flops_per_image(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None:
            self._t0, self._batches, self._images = self._now(trainer), 0, 0
            return
        self._batches += 1
        self._images += split_batch(batch)[0].shape[0] * trainer.world_size
        if self._batches < self.window:
            return
        now = self._now(trainer)
        rate = self._images / (now - self._t0)
        self._t0, self._batches, self._images = now, 0, 0
        if not self._warm:
            self._warm = True
            return
        pl_module.log("train/images_per_sec", rate, on_step=True, on_epoch=False, rank_zero_only=True)
        if self._peak_flops and self._flops_per_image:
            mfu = rate * self._flops_per_image / (self._peak_flops * trainer.world_size)
            pl_module.log("train/mfu", mfu, on_step=True, on_epoch=False, rank_zero_only=True)
