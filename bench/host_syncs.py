"""Host syncs per training step: the calls that make the CPU wait for the GPU inside ``Trainer.fit``.

A training step runs fastest when the CPU queues kernels ahead of the GPU and never waits. Reading
a device value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``), an op whose output
size depends on the values (``nonzero``, boolean-mask indexing, ``unique``) and a blocking copy of
host data to the device (``torch.tensor(x, device="cuda")``, ``self.log`` of a Python float) each
stall the queue until the GPU has caught up.

This script runs a real ``cli.py fit`` with any config and records every such call in ``--steps``
whole steps after the first ``--start``: forward, backward, optimizer, callbacks, logging, and the
fetch, transfer and device-side augmentation of the next batch.

* On CUDA, torch's sync debug mode reports every real synchronisation (D2H reads and blocking
  H2D copies), with the Python line that caused it.
* On the CPU there is nothing to wait for, so two torch modes record what would sync on a GPU:
  value reads and data-dependent shapes of device tensors (the model's, the batch's and all
  computed from them), host tensors copied to the device without ``non_blocking``, device tensors
  copied to the host, and tensors built from host data on the device. Host bookkeeping (AdamW's
  step counters, augmentation parameters drawn on the host) never touches a device tensor and
  is not counted. Whether a ``non_blocking`` copy really comes from pinned memory only the CUDA
  mode can tell.

Steps in which a logger writes (every ``trainer.log_every_n_steps``) read the logged values on the
host by design; they are reported apart.

    python -m bench.host_syncs --config smoke.yaml
    python -m bench.host_syncs --config cifar10.yaml --config cifar10_folder.yaml \\
        --data.init_args.root .gpu/cifar10-jpeg --trainer.max_epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

from lightning_modules.cli import CoAtNetCLI
from lightning_modules.config_files import config_values, read_config_file, resolve_config_paths

REPO_ROOT = Path(__file__).resolve().parents[1]

# Operators that make the host wait for the device when an input lives on a GPU.
SYNCING_OPS = {
    "aten._local_scalar_dense": "value read on the host (.item(), float(), int(), bool())",
    "aten.is_nonzero": "value read on the host (bool() of a tensor)",
    "aten.equal": "value read on the host (torch.equal)",
    "aten.nonzero": "output size depends on values (nonzero)",
    "aten.masked_select": "output size depends on values (masked_select)",
    "aten._unique2": "output size depends on values (unique)",
    "aten.unique_dim": "output size depends on values (unique)",
    "aten.unique_consecutive": "output size depends on values (unique_consecutive)",
    "aten.repeat_interleave": "output size depends on values (repeat_interleave)",
    "aten.bincount": "output size depends on values (bincount)",
}
BOOL_INDEX_OPS = ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_")
HOST_DATA_FACTORIES = ("tensor", "as_tensor", "asarray")


def _op_name(func: Any) -> str:
    """``aten.nonzero.default`` -> ``aten.nonzero``."""
    return ".".join(str(func).split(".")[:2])


def _tensors(values: Any) -> list[torch.Tensor]:
    """The tensors among op arguments or outputs (one level of lists, as in foreach ops and indices)."""
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _short_path(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/")[-1]
    if path.startswith(str(REPO_ROOT)):
        return str(Path(path).relative_to(REPO_ROOT))
    return path


def _caller_frames() -> list[traceback.FrameSummary]:
    """Stack frames outside torch and this file, innermost first."""
    return [
        frame
        for frame in reversed(traceback.extract_stack())
        if frame.filename != __file__ and "/torch/" not in frame.filename and not frame.filename.startswith("<")
    ]


def call_site(depth: int = 2) -> str:
    """The ``depth`` innermost frames outside torch and this file, innermost first: the lines to change."""
    frames = _caller_frames()[:depth]
    return " < ".join(f"{_short_path(f.filename)}:{f.lineno} ({f.name})" for f in frames) or "unknown"


def called_from_project() -> bool:
    """Whether the innermost caller outside torch is this repository's code (not Lightning's or torchmetrics')."""
    frames = _caller_frames()
    return bool(frames) and frames[0].filename.startswith(str(REPO_ROOT)) and "site-packages" not in frames[0].filename


@dataclass
class SyncRecord:
    """Calls that would (CPU) or did (CUDA) stall the host, counted by (reason, call site)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, site: str) -> None:
        self.counts[(reason, site)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class DeviceTensors:
    """The tensors that would live on the GPU: the model's, the batch's, and everything computed from them.

    Host bookkeeping (an optimizer's step counters, numbers drawn for augmentation) is made of
    tensors that never touch one of these, so reading it on the host costs nothing on a GPU either.
    Images decoded inside ``on_after_batch_transfer`` (``decode: gpu``) count as device tensors too.
    """

    def __init__(self) -> None:
        self._marked = WeakTensorKeyDictionary()
        self.decoding_on_device = False  # inside on_after_batch_transfer: decoders there write to the device
        self.transferring_batch = False  # inside transfer_batch_to_device: Lightning copies non_blocking on GPUs

    def mark(self, tensors: Any) -> None:
        for tensor in _tensors(tensors if isinstance(tensors, (list, tuple)) else [tensors]):
            self._marked[tensor] = True

    def any(self, tensors: list[torch.Tensor]) -> bool:
        return any(tensor in self._marked for tensor in tensors)


class _SyncingOpRecorder(TorchDispatchMode):
    """Records ``SYNCING_OPS`` and boolean-mask indexing that read device tensors; tracks which tensors those are."""

    def __init__(self, record: SyncRecord, device_tensors: DeviceTensors) -> None:
        super().__init__()
        self.record, self.device_tensors = record, device_tensors

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = _op_name(func)
        if name.startswith("image.") and self.device_tensors.decoding_on_device:  # torchvision's decoders
            self.device_tensors.mark(out if isinstance(out, (list, tuple)) else [out])
        if not self.device_tensors.any(_tensors(args)):
            return out
        if name in SYNCING_OPS:
            self.record.add(SYNCING_OPS[name], call_site())
        elif name in BOOL_INDEX_OPS and _has_bool_index(args):
            self.record.add("output size depends on values (boolean-mask indexing)", call_site())
        self.device_tensors.mark(out if isinstance(out, (list, tuple)) else [out])
        return out


def _device_target(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to(...)`` names a device other than the host (a ``torch.device``, or a string but "cpu")."""
    for value in (kwargs.get("device"), *args):
        if isinstance(value, torch.device) or (isinstance(value, str) and value != "cpu"):
            return True
    return False


def _non_blocking(args: tuple, kwargs: dict) -> bool:
    return bool(kwargs.get("non_blocking", False)) or any(value is True for value in args)


class _CopyRecorder(TorchFunctionMode):
    """Records copies between host and device, and tensors built from host data on the device.

    * ``x.to(device)`` of a host tensor without ``non_blocking``, in this repository's code: a copy
      that waits for the GPU. (Libraries move their own state with ``.to(device)``, which is a no-op
      on a GPU once the state lives there; the recorder cannot know, so it checks only our code.)
      On the CPU ``.to(device)`` would return ``x`` itself; here it returns a copy, as on a GPU,
      and the copy counts as a device tensor from then on.
    * ``x.cpu()``, ``x.numpy()``, ``x.tolist()`` of a device tensor: a read on the host.
    * ``x.new_tensor(data)`` of a device tensor, and ``torch.tensor(data, device=d)`` whenever a
      device is named (on the CPU the recorder cannot tell a GPU from the host; host bookkeeping
      names no device).
    """

    def __init__(self, record: SyncRecord, device_tensors: DeviceTensors) -> None:
        super().__init__()
        self.record, self.device_tensors = record, device_tensors

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        on_device = source is not None and self.device_tensors.any([source])
        if name == "to" and source is not None and not on_device and _device_target(args[1:], kwargs):
            blocking = not _non_blocking(args[1:], kwargs) and not self.device_tensors.transferring_batch
            if blocking and called_from_project():
                self.record.add("host tensor copied to the device without non_blocking (blocking copy)", call_site())
            out = func(*args, **kwargs)
            out = out.clone() if out is source else out
            self.device_tensors.mark([out])
            return out
        if name in ("cpu", "numpy", "tolist") and on_device:
            self.record.add(f"device tensor read on the host (.{name}())", call_site())
        named_device = name in HOST_DATA_FACTORIES and kwargs.get("device") is not None
        if named_device or (name == "new_tensor" and on_device):
            self.record.add("tensor built from host data on the device (blocking copy)", call_site())
        return func(*args, **kwargs)


class SyncAudit:
    """Context manager recording host syncs: torch's sync debug mode on CUDA, syncing operators on the CPU.

    ``device_tensors`` must hold the model's tensors (and the batch's, as they arrive) for the CPU
    recorder; the CUDA mode needs nothing, the driver knows where every tensor is.
    """

    def __init__(self, device: torch.device, device_tensors: DeviceTensors) -> None:
        self.device = device
        self.record = SyncRecord()
        self._modes = [_CopyRecorder(self.record, device_tensors), _SyncingOpRecorder(self.record, device_tensors)]
        self._warnings: Any = None
        self._caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> SyncAudit:
        if self.device.type == "cuda":
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            for mode in self._modes:
                mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type != "cuda":
            for mode in reversed(self._modes):
                mode.__exit__(*exc)
            return
        torch.cuda.set_sync_debug_mode("default")
        self._warnings.__exit__(*exc)
        for caught in self._caught:
            if "synchroniz" in str(caught.message):
                self.record.add("CUDA synchronisation", f"{caught.filename}:{caught.lineno}")


class HostSyncAudit(L.Callback):
    """Audits whole training steps ``start .. start + steps - 1`` (0-based), start of batch to start of batch.

    Steps in which a logger writes are counted into ``logging_steps`` instead of ``steps``.
    """

    def __init__(self, start: int, steps: int) -> None:
        self.start, self.stop = start, start + steps
        self.steps = SyncRecord()
        self.logging_steps = SyncRecord()
        self.audited = {"steps": 0, "logging_steps": 0}
        self.device_tensors = DeviceTensors()
        self._audit: SyncAudit | None = None
        self._logging = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Mark the model's tensors, and every batch as it reaches the device, for the CPU recorder."""
        self.device_tensors.mark([*pl_module.parameters(), *pl_module.buffers()])
        for metric in pl_module.modules():
            self.device_tensors.mark([getattr(metric, name) for name in getattr(metric, "_defaults", {})])
        transfer_owner = _batch_hook_owner(trainer, pl_module, "transfer_batch_to_device")
        transfer = transfer_owner.transfer_batch_to_device

        def transfer_and_mark(batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            self.device_tensors.transferring_batch = True
            try:
                batch = transfer(batch, device, dataloader_idx)
            finally:
                self.device_tensors.transferring_batch = False
            self.device_tensors.mark(list(batch) if isinstance(batch, (list, tuple)) else [batch])
            return batch

        transfer_owner.transfer_batch_to_device = transfer_and_mark
        after_owner = _batch_hook_owner(trainer, pl_module, "on_after_batch_transfer")
        after_transfer = after_owner.on_after_batch_transfer

        def after_transfer_on_device(batch: Any, dataloader_idx: int) -> Any:
            self.device_tensors.decoding_on_device = True
            try:
                return after_transfer(batch, dataloader_idx)
            finally:
                self.device_tensors.decoding_on_device = False

        after_owner.on_after_batch_transfer = after_transfer_on_device
        for logger in trainer.loggers:
            logger.log_metrics = self._noting_writes(logger.log_metrics)

    def _noting_writes(self, log_metrics: Any) -> Any:
        def log_and_note(*args: Any, **kwargs: Any) -> Any:
            self._logging = True
            return log_metrics(*args, **kwargs)

        return log_and_note

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Close the previous step's audit and open this one's: each covers one step, its callbacks and
        logging, then the next batch's fetch, transfer and device-side augmentation."""
        if self._audit is not None:
            self._audit.__exit__(None, None, None)
            target = self.logging_steps if self._logging else self.steps
            target.counts.update(self._audit.record.counts)
            self.audited["logging_steps" if self._logging else "steps"] += 1
            self._audit = None
        self._logging = False
        if self.start <= trainer.global_step < self.stop:
            self._audit = SyncAudit(pl_module.device, self.device_tensors).__enter__()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A step whose audit runs into validation and the epoch's end is not a plain step: drop it."""
        if self._audit is not None:
            self._audit.__exit__(None, None, None)
            self._audit = None


def _batch_hook_owner(trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> Any:
    """Whose ``name`` hook Lightning calls: the DataModule's unless only the LightningModule overrides it."""
    datamodule = trainer.datamodule
    if datamodule is None or (is_overridden(name, pl_module) and not is_overridden(name, datamodule)):
        return pl_module
    return datamodule


def audit_fit(cli_args: Sequence[str], start: int, steps: int) -> HostSyncAudit:
    """Build ``cli.py fit`` from ``cli_args`` (configs and overrides), add the audit, fit, return the audit."""
    cli = CoAtNetCLI(args=resolve_config_paths(list(cli_args)), run=False)
    audit = HostSyncAudit(start, steps)
    cli.trainer.callbacks.append(audit)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return audit


def format_report(audit: HostSyncAudit) -> str:
    lines = [
        "| steps | audited | syncs | syncs/step | reason | call site | count |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for label, record in (("plain", audit.steps), ("logging", audit.logging_steps)):
        steps = audit.audited["steps" if label == "plain" else "logging_steps"]
        per_step = record.total / steps if steps else 0.0
        lines.append(f"| {label} | {steps} | {record.total} | {per_step:.2f} |  |  |  |")
        for (reason, site), count in record.counts.most_common():
            lines.append(f"|  |  |  |  | {reason} | `{site}` | {count} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--start", type=int, default=3, help="steps left unaudited first (compilation, warm-up)")
    parser.add_argument("--steps", type=int, default=6, help="whole steps audited after --start")
    args, cli_args = parser.parse_known_args(argv)
    if args.start < 1 or args.steps < 1:
        parser.error("--start and --steps must be >= 1")
    return args, cli_args


def logger_is_off(cli_args: Sequence[str]) -> bool:
    """Whether the config files and overrides, applied in order, leave ``trainer.logger`` false or null."""
    files = config_values(cli_args)
    settings = [(i, (read_config_file(path).get("trainer") or {}).get("logger", True)) for i, path in files]
    for i, arg in enumerate(cli_args):
        name, eq, value = arg.partition("=")
        if name == "--trainer.logger" and (eq or i + 1 < len(cli_args)):
            settings.append((i, yaml.safe_load(value if eq else cli_args[i + 1])))
    return max(settings, key=lambda setting: setting[0], default=(0, True))[1] in (False, None)


def main(argv: Sequence[str] | None = None) -> HostSyncAudit:
    """Audit the fit given by the remaining arguments (as for ``cli.py fit``), print the table."""
    args, cli_args = parse_args(list(sys.argv[1:] if argv is None else argv))
    cli_args = [*cli_args, "--trainer.max_steps", str(args.start + args.steps + 1)]  # +1 closes the last audit
    with tempfile.TemporaryDirectory(prefix="host_syncs_") as scratch:
        # The audit run's checkpoints and logs go to a scratch folder: left under logs/<name>/, its
        # last.ckpt would be what the next `cli.py fit --ckpt_path last` of that config resumes.
        after_configs = max((index + 1 for index, _ in config_values(cli_args)), default=0)
        scratch_args = [f"--trainer.default_root_dir={scratch}"]
        if not logger_is_off(resolve_config_paths(cli_args)):  # a logger that is off takes no save_dir
            scratch_args.append(f"--trainer.logger.init_args.save_dir={scratch}")
        cli_args[after_configs:after_configs] = scratch_args  # after the config files, before the user's overrides
        audit = audit_fit(cli_args, args.start, args.steps)
    print("\n" + format_report(audit))
    return audit


if __name__ == "__main__":
    main()
