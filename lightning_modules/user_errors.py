"""User-facing errors: a short ``error: ...`` line instead of a 40-line traceback.

``python cli.py`` runs through :func:`exit_readably`: errors the user can fix (bad data paths,
invalid sizes or settings, unusable checkpoints, a diverged run, GPU out of memory, a checkpoint that
could not be written for a full disk, a file-size limit or a read-only folder) are printed as
one short message on stderr, followed by where they were raised, and the process exits with status
2, or 3 for a diverged run (a result of the settings, not a refused one: ``python -m ablate`` records it).
Set ``COATNET_TRACEBACK=1`` to get the full traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NoReturn

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser

from lightning_modules.hparam_ranges import allowed_range

REPO_ROOT = Path(__file__).resolve().parents[1]
TRACEBACK_ENV = "COATNET_TRACEBACK"
USER_ERROR_EXIT = 2
DIVERGED_EXIT = 3  # the NaN guard stopped a run: a result (ablate records it), not a refused setting
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


_WORKER_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def worker_error(err: BaseException) -> tuple[str, str] | None:
    """(message, file:line) of the error a DataLoader worker raised, or None for any other error.

    PyTorch re-raises it in the main process with the same type, but with the worker's whole traceback as
    its message ("Caught DatasetError in DataLoader worker process 1. Original Traceback ...").
    """
    text = str(err)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return None
    kind = type(err)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    start = text.rfind(f"\n{name}: ")
    if start < 0:
        return None
    frames = _WORKER_FRAME.findall(text[:start])
    origin = f"{_relative(Path(frames[-1][0]))}:{frames[-1][1]} in a loader worker" if frames else "a loader worker"
    return text[start + len(name) + 3 :].strip(), origin


_ELSEWHERE = "point checkpoint.dirpath (or trainer.logger.init_args.save_dir) at"
# errno -> (what happened, the fix) for a checkpoint that could not be written
WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", f"free space, or {_ELSEWHERE} a disk with room"),
    errno.EDQUOT: ("the disk quota is used up", f"free space in the quota, or {_ELSEWHERE} another disk"),
    errno.EFBIG: ("it exceeds the file-size limit", "raise the limit (ulimit -f unlimited, or ask for it in the job)"),
    errno.EROFS: ("the folder is on a read-only file system", f"{_ELSEWHERE} a writable folder"),
    errno.EACCES: ("there is no permission to write into the folder", f"{_ELSEWHERE} a folder you may write to"),
}


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _checkpoint_target(err: BaseException) -> str | None:
    """The file the innermost ``save_checkpoint`` call (Trainer, strategy or checkpoint IO) was writing, or None."""
    target = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_name == "save_checkpoint":
            target = frame.f_locals.get("path") or frame.f_locals.get("filepath") or target
    return None if target is None else str(target)


def checkpoint_write_message(err: BaseException) -> str | None:
    """One line for a checkpoint that could not be written for want of space, size limit or permission, or None.

    torch.save reports a failed write as a RuntimeError; the OSError with the reason is its context.
    """
    failure = next((e for e in _chain(err) if isinstance(e, OSError) and e.errno in WRITE_FAILURES), None)
    target = _checkpoint_target(err) if failure is not None else None
    if target is None:
        return None
    what, fix = WRITE_FAILURES[failure.errno]
    return (
        f"could not write checkpoint {target}: {what} ({errno.errorcode[failure.errno]}). Any earlier checkpoint "
        f"there is intact, nothing was lost (checkpoints are written to a temporary file, then renamed). Fix: {fix}; "
        "then resume with --ckpt_path last"
    )


_CPU_ALLOCATION = re.compile(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes")
_SEED_BOUNDS = re.compile(r"^(-?\d+) is not in bounds, numpy accepts from (\d+) to (\d+)")


def cpu_memory_message(err: BaseException) -> str | None:
    """One line for a host allocation that cannot succeed (an image size or batch far too large), else None."""
    found = _CPU_ALLOCATION.search(str(err)) if isinstance(err, RuntimeError) else None
    if found is None:
        return None
    return (
        f"out of host memory: one tensor needed {int(found[1]) / 2**30:,.1f} GiB. Check the sizes: "
        "--data.init_args.image_size and --data.init_args.batch_size (and the model's widths and depths)"
    )


def seed_message(err: BaseException) -> str | None:
    """Lightning's "-5 is not in bounds" as the key, the value and the allowed range."""
    found = _SEED_BOUNDS.match(str(err)) if isinstance(err, ValueError) else None
    return f"seed_everything={found[1]} is out of range: allowed {found[2]} to {found[3]}" if found else None


def user_message(err: BaseException) -> str | None:
    """The message to show for an error the user can fix, or ``None`` for a bug (keep the traceback)."""
    if isinstance(err, MisconfigurationException | ValueError) and "gpu" in str(err).lower():
        if not torch.cuda.is_available():
            return f"{err}\n{CPU_HINT}"
    if isinstance(err, torch.OutOfMemoryError):
        return out_of_memory_message(err)
    if message := checkpoint_write_message(err) or cpu_memory_message(err) or seed_message(err):
        return message
    if isinstance(err, RuntimeError) and (summary := summarize_state_dict_error(str(err))):
        return summary
    if isinstance(err, (ValueError, TrainingDiverged, MisconfigurationException)):
        return str(err)
    return None


def _relative(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def _origin(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    return f"{_relative(Path(frames[-1].filename))}:{frames[-1].lineno}"


def exit_readably(main: Callable[[], object], stream: IO[str] | None = None) -> None:
    """Run ``main``; turn a user-fixable error into ``error: <message>`` on stderr and exit status 2
    (``DIVERGED_EXIT``, 3, for a NaN/inf loss)."""
    try:
        main()
    except Exception as raised:
        err = root_cause(raised)
        message = user_message(err)
        if message is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        message, origin = worker_error(err) or (message, _origin(err))
        out = stream or sys.stderr
        out.write(f"error: {message}\n")
        out.write(f"(raised at {origin}; set {TRACEBACK_ENV}=1 for the full traceback)\n")
        out.flush()
        sys.exit(DIVERGED_EXIT if isinstance(err, TrainingDiverged) else USER_ERROR_EXIT)


_UNION_PROBLEM = re.compile(
    r"^(?P<key>.*?):?\n\s*Does not validate against any of the Union subtypes\n.*?"
    r"Problem with given class_path '(?P<class_path>[^']+)':\n(?P<problem>.*?)\n\s*- Expected a <class 'NoneType'>",
    re.DOTALL,
)


_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_RESTRICTION = re.compile(
    r"(?:Not of type \w+: (?P<value>.*?) ?)?does not conform to restriction (?P<rule>v\S+(?: and v\S+)?)"
)
_GIVEN_VALUE = re.compile(r"Given value: (.*)")


def range_parse_error(message: str) -> str | None:
    """``model.min_lr_ratio=5 is out of range: allowed [0, 1]`` from jsonargparse's report on a value outside
    the range its type allows (the key nested over as many lines as dataclasses and unions wrap it), or None."""
    restriction = _RESTRICTION.search(message)
    if restriction is None:
        return None
    key = ".".join(_PARSER_KEY.findall(message[: restriction.start()]))
    given = restriction["value"] or next(iter(_GIVEN_VALUE.findall(message)), "?")
    return f"{key}={given} is out of range: allowed {allowed_range(restriction['rule'])}"


_LISTED_ERROR = re.compile(r"^\s*- (.+)$", re.MULTILINE)
_NOT_THE_CAUSE = (
    "Problem with given class_path",
    "Does not validate",
    "Expected a path",
    "Expected a <class 'NoneType'>",
)


def nested_key_error(message: str) -> str | None:
    """``model.model_overrides.conv.stride_at: Expected a typing.Literal['dw', '1x1', 'pool']`` from jsonargparse's
    report on a bad value inside a dataclass (each level a "Parser key" and a union of it and None), or None."""
    keys = _PARSER_KEY.findall(message)
    causes = [line for line in _LISTED_ERROR.findall(message) if not line.startswith(_NOT_THE_CAUSE)]
    if len(keys) < 2 or keys[0] == "data" or not causes:
        return None
    return f"{'.'.join(keys)}: {causes[0]}"


_WRAPPED = re.compile(
    r"Problem with given class_path '[^']+':\n\s*(?P<line>[^\n]+)\n\s*- Expected a <class 'NoneType'>"
)
_INNER_LINE = re.compile(r"(?P<key>\w[\w.]*)(?P<rest>=.* is out of range: .*|: .*)")


def wrapped_inner_error(message: str) -> str | None:
    """The one line a dataclass's own parser reported (already made concise), under the outer key, or None."""
    keys, wrapped = _PARSER_KEY.findall(message), _WRAPPED.search(message)
    if not keys or keys[0] == "data" or wrapped is None:
        return None
    inner = _INNER_LINE.fullmatch(wrapped["line"])
    return f"{keys[0]}.{inner['key']}{inner['rest']}" if inner else f"{keys[0]}: {wrapped['line']}"


_OPTIMIZER_WITHOUT_CLASS = re.compile(
    r'Parser key "(?P<key>[^"]+)":\s*Type .*? expects a function or a callable class: Dict must include a class_path'
    r".*?NestedArg\(key='(?P<arg>[\w.]+)'",
    re.DOTALL,
)
_LINKED_OVERRIDE = re.compile(
    r'Parser key "model\.model_overrides".*?Option \'(?P<field>img_size|num_classes)\' is not accepted', re.DOTALL
)
_DATA_KEY = {"img_size": "image_size", "num_classes": "num_classes"}


def hinted_parse_error(message: str) -> str | None:
    """One line with the fix for two mistakes whose parser message names neither: an argument of the default
    optimizer (a function, so it has no ``init_args``), and a model override that the DataModule sets."""
    if optimizer := _OPTIMIZER_WITHOUT_CLASS.search(message):
        key, arg = optimizer["key"], optimizer["arg"].removeprefix("init_args.")
        return (
            f"{key}.init_args.{arg}: {key} is the default optimizer, a function without arguments (AdamW, lr 1e-3, "
            f"weight_decay 0.05); name the class first: --{key} torch.optim.AdamW --{key}.init_args.{arg} VALUE "
            f"(add --{key}.init_args.weight_decay 0.05 to keep the default's decay)"
        )
    if linked := _LINKED_OVERRIDE.search(message):
        data_key = _DATA_KEY[linked["field"]]
        return (
            f"model.model_overrides: Option '{linked['field']}' is not accepted: the model takes it from the "
            f"DataModule; set --data.init_args.{data_key} instead"
        )
    return None


def concise_parse_error(message: str) -> str:
    """The one relevant line or branch of jsonargparse's report on a bad value.

    A value outside its range, or a bad one inside ``model.model_overrides``, becomes one line naming the key
    (and the range). ``data`` is typed "a
    LightningDataModule or None", so a wrong key or value under ``--data.init_args.*`` is reported against both
    alternatives, with the subtype list and the raw value: ten lines around the one that matters.
    """
    if (
        one_line := hinted_parse_error(message)
        or range_parse_error(message)
        or wrapped_inner_error(message)
        or (nested_key_error(message))
    ):
        return one_line
    match = _UNION_PROBLEM.match(message)
    if match is None:
        return message
    problem = textwrap.indent(textwrap.dedent(match["problem"]).strip(), "  ")
    return f"{match['key']} ({match['class_path']}):\n{problem}"


class ConciseArgumentParser(LightningArgumentParser):
    """Prints a one-line usage with parse errors, so the ``error:`` line is not buried under 70 option lines,
    and only the relevant part of a DataModule argument error. ``--help`` still lists every option.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(concise_parse_error(message), ex)

    def print_usage(self, file: IO[str] | None = None) -> None:
        (file or sys.stdout).write(f"usage: {self.prog} [-h] [-c CONFIG] [--KEY VALUE ...]\n")
