"""User-facing errors: a short ``error: ...`` line instead of a 40-line traceback.

``python cli.py`` runs through :func:`exit_readably`: errors the user can fix (bad data paths,
invalid sizes or settings, unusable checkpoints, a diverged run, GPU out of memory) are printed as
one short message on stderr, followed by where they were raised, and the process exits with status
2. Set ``COATNET_TRACEBACK=1`` to get the full traceback instead. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser

REPO_ROOT = Path(__file__).resolve().parents[1]
TRACEBACK_ENV = "COATNET_TRACEBACK"
USER_ERROR_EXIT = 2
SHOWN_KEYS = 3


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; raised before the bad weights reach a checkpoint."""


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    return shown + (f", ... (+{len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS else "")


def summarize_state_dict_error(message: str) -> str | None:
    """A few lines out of torch's strict ``load_state_dict`` error (which lists every key), else ``None``."""
    head = re.match(r"Error\(s\) in loading state_dict for (\w+)", message)
    if head is None:
        return None
    missing = re.search(r"Missing key\(s\) in state_dict: (.*)", message)
    unexpected = re.search(r"Unexpected key\(s\) in state_dict: (.*)", message)
    missing_keys = re.findall(r'"([^"]+)"', missing.group(1)) if missing else []
    unexpected_keys = re.findall(r'"([^"]+)"', unexpected.group(1)) if unexpected else []
    shapes = re.findall(
        r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[^\]]*\])\)",
        message,
    )
    lines = [
        f"the checkpoint does not fit the model ({head.group(1)}): {len(missing_keys)} missing keys, "
        f"{len(unexpected_keys)} unexpected keys, {len(shapes)} shape mismatches"
    ]
    if missing_keys:
        lines.append(f"  missing in checkpoint: {_listing(missing_keys)}")
    if unexpected_keys:
        lines.append(f"  not in model: {_listing(unexpected_keys)}")
    if shapes:
        lines.append("  shapes (checkpoint vs model): " + _listing([f"{k} {c} vs {m}" for k, c, m in shapes]))
    lines.append(
        "It was written for another model_name, num_classes or model_overrides: run with the config.yaml "
        "saved next to its checkpoints/ folder, or pass a checkpoint of this model."
    )
    return "\n".join(lines)


def out_of_memory_message(err: torch.OutOfMemoryError) -> str:
    """Why the step failed and the two settings that fix it without changing the recipe."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else "CUDA out of memory"
    return (
        f"out of GPU memory ({first[:200]}).\n"
        "Use a smaller per-device batch, e.g. --data.init_args.batch_size <half>, and keep the global batch "
        "(and so the learning rate) with --trainer.accumulate_grad_batches <twice as many>."
    )


CPU_HINT = (
    "No GPU is visible here; for a CPU run add --trainer.accelerator cpu --trainer.devices 1 "
    "--trainer.strategy auto --trainer.precision 32-true"
)


def root_cause(err: BaseException) -> BaseException:
    """The error a class raised while jsonargparse instantiated it, instead of jsonargparse's union summary."""
    while str(err).startswith("Does not validate against any of the Union subtypes") and err.__cause__:
        err = err.__cause__
    return err


def unreadable_checkpoint_message(err: BaseException) -> str | None:
    """For ``torch.load`` failing on a file that is no checkpoint (LightningCLI reads ``--ckpt_path`` early and raw)."""
    text = str(err).strip()
    if not (
        isinstance(err, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile))
        or (isinstance(err, RuntimeError) and "PytorchStreamReader" in text)
    ):
        return None
    detail = " ".join(line.strip() for line in text.splitlines()[-4:] if line.strip())[:200] or type(err).__name__
    return (
        f"the --ckpt_path file could not be loaded as a PyTorch checkpoint ({detail}). It may be truncated, "
        "another kind of file, or hold objects that torch.load(weights_only=True) refuses; pass another one, "
        "e.g. last.ckpt or an epoch*.ckpt from the same folder."
    )


def user_message(err: BaseException) -> str | None:
    """The message to show for an error the user can fix, or ``None`` for a bug (keep the traceback)."""
    if (unreadable := unreadable_checkpoint_message(err)) is not None:
        return unreadable
    if isinstance(err, MisconfigurationException | ValueError) and "gpu" in str(err).lower():
        if not torch.cuda.is_available():
            return f"{err}\n{CPU_HINT}"
    if isinstance(err, torch.OutOfMemoryError):
        return out_of_memory_message(err)
    if isinstance(err, RuntimeError) and (summary := summarize_state_dict_error(str(err))):
        return summary
    if isinstance(err, (ValueError, TrainingDiverged, MisconfigurationException)):
        return str(err)
    return None


def _origin(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    path = Path(frames[-1].filename)
    return f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}:{frames[-1].lineno}"


def exit_readably(main: Callable[[], object], stream: IO[str] | None = None) -> None:
    """Run ``main``; turn a user-fixable error into ``error: <message>`` on stderr and exit status 2."""
    try:
        main()
    except Exception as raised:
        err = root_cause(raised)
        message = user_message(err)
        if message is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        out = stream or sys.stderr
        out.write(f"error: {message}\n")
        out.write(f"(raised at {_origin(err)}; set {TRACEBACK_ENV}=1 for the full traceback)\n")
        out.flush()
        sys.exit(USER_ERROR_EXIT)


class ConciseArgumentParser(LightningArgumentParser):
    """Prints a one-line usage with parse errors, so the ``error:`` line is not buried under 70 option lines.

    ``--help`` still lists every option.
    """

    def print_usage(self, file: IO[str] | None = None) -> None:
        (file or sys.stdout).write(f"usage: {self.prog} [-h] [-c CONFIG] [--KEY VALUE ...]\n")
