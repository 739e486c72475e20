"""Bad settings are refused before anything is built, in one line naming the key (or file) and the fix.

Out-of-range hyper-parameters, integer batch limits, config files that are no YAML mapping, a warm-up longer
than the run, and checkpoints that cannot be written (full disk, file-size limit, read-only or forbidden folder).
"""

from __future__ import annotations

import contextlib
import errno
import io
import resource
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import REPO_ROOT

from cli import CoAtNetCLI
from lightning_modules.classifier import ImageClassifier
from lightning_modules.resilience import atomic_io
from lightning_modules.resilience.atomic_io import AtomicCheckpointIO
from lightning_modules.user_errors import USER_ERROR_EXIT, checkpoint_write_message, exit_readably

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
NANO = {"model_name": "coatnet_nano", "num_classes": 10, "image_size": (32, 32)}


def _cli(*args: str) -> CoAtNetCLI:
    with torch.device("meta"), mock.patch.object(sys, "argv", ["cli.py"]):
        return CoAtNetCLI(run=False, args=["--config", SMOKE, "--trainer.logger=false", *args])


def _parse_error(capsys, *args: str) -> str:
    """The ``error:`` part of what the parser printed when it refused ``args``."""
    with pytest.raises(SystemExit) as exit_info:
        _cli(*args)
    assert exit_info.value.code == USER_ERROR_EXIT
    return capsys.readouterr().err.split("error: ", 1)[1].strip()


@pytest.mark.parametrize(("item", "expected"), [
    ("--model.min_lr_ratio=5", "model.min_lr_ratio=5 is out of range: allowed [0, 1]"),
    ("--model.label_smoothing=1.5", "model.label_smoothing=1.5 is out of range: allowed [0, 1)"),
    ("--model.warmup_steps=-5", "model.warmup_steps=-5 is out of range: allowed >= 0"),
    ("--model.layer_decay=0", "model.layer_decay=0 is out of range: allowed (0, 1]"),
    ("--model.mixup_alpha=-1", "model.mixup_alpha=-1 is out of range: allowed >= 0"),
    ("--model.cutmix_alpha=-0.5", "model.cutmix_alpha=-0.5 is out of range: allowed >= 0"),
    ("--model.mix_prob=2", "model.mix_prob=2 is out of range: allowed [0, 1]"),
    ("--model.switch_prob=-0.1", "model.switch_prob=-0.1 is out of range: allowed [0, 1]"),
    ("--model.model_overrides.head.dropout=1", "model.model_overrides.head.dropout=1 is out of range: allowed [0, 1)"),
    # every range coatnet.config declares is checked while parsing, not only the drop rates
    ("--model.model_overrides.transformer.head_dim=0",
     "model.model_overrides.transformer.head_dim=0 is out of range: allowed > 0"),
    ("--model.model_overrides.conv.expand_ratio=-1",
     "model.model_overrides.conv.expand_ratio=-1 is out of range: allowed > 0"),
])  # fmt: skip
def test_out_of_range_hyper_parameters_are_refused_while_parsing(item, expected, capsys):
    assert _parse_error(capsys, item) == expected


@pytest.mark.parametrize(("item", "expected"), [
    ("--model.optimizer.init_args.lr=0", r"model.optimizer.init_args.lr=0.0 is out of range: allowed > 0"),
    ("--model.optimizer.init_args.weight_decay=-0.1", r"weight_decay=-0.1 is out of range: allowed >= 0"),
])  # fmt: skip
def test_optimizer_settings_out_of_range_are_refused_before_building(item, expected):
    with pytest.raises(ValueError, match=expected):
        _cli(item)


def test_python_callers_get_the_same_range_checks():
    with pytest.raises(ValueError, match=r"label_smoothing=1.5 is out of range: allowed \[0, 1\)"):
        ImageClassifier(**NANO, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"num_classes=1 is out of range: allowed >= 2"):
        ImageClassifier(**{**NANO, "num_classes": 1})


def test_integer_batch_limits_count_batches_and_floats_stay_fractions(tmp_path):
    parser = _cli().parser
    (tmp_path / "limits.yaml").write_text("trainer:\n  limit_train_batches: 2\n")
    config = parser.parse_args(["--config", SMOKE, "--config", str(tmp_path / "limits.yaml"),
                                "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=0.5",
                                "--trainer.limit_predict_batches=1.0"])  # fmt: skip
    limits = [config.trainer[f"limit_{stage}_batches"] for stage in ("train", "val", "test", "predict")]
    assert limits == [2, 1, 0.5, 1.0]
    assert [type(limit) for limit in limits] == [int, int, float, float], "1 is one batch, 1.0 all of them"


@pytest.mark.parametrize(("text", "expected"), [
    ("trainer:\n  max_epochs: [1\n", "is not valid YAML: while parsing a flow sequence, line 2"),
    ("", "is empty: give it keys such as trainer:, model: and data:"),
    ("# only a comment\n", "is empty"),
    ("- trainer\n- model\n", "holds a list, not keys such as trainer:, model: and data:"),
])  # fmt: skip
def test_a_config_file_that_is_no_yaml_mapping_is_one_line_naming_it(text, expected, tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    error = _parse_error(capsys, "--config", str(path))
    assert error.startswith(f"config file {path} ") and expected in error and "\n" not in error, error


def test_a_warm_up_longer_than_the_run_warns_once_with_both_numbers():
    module = ImageClassifier(**NANO, warmup_steps=500)
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=40, accumulate_grad_batches=1, precision="32-true", gradient_clip_val=None
    )
    with pytest.warns(UserWarning, match=r"model.warmup_steps=500 is longer than the whole run \(40 optimizer steps\)"):
        module.configure_optimizers()
    module.hparams.warmup_steps = 40
    with mock.patch("lightning_modules.optim.rank_zero_warn") as warn:
        module.configure_optimizers()
    warn.assert_not_called()


BIG = {"weights": torch.zeros(50_000)}  # 200 kB, beyond the file-size limit below


def _failed_save(path, **patches) -> BaseException:
    """The error of saving BIG over ``path`` through the project's checkpoint IO, with ``patches`` applied."""
    with mock.patch.multiple(atomic_io, **patches) if patches else contextlib.nullcontext():
        with pytest.raises(Exception) as raised:
            AtomicCheckpointIO().save_checkpoint(BIG, path)
    return raised.value


def _previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"the previous checkpoint")
    return path


def _check_message(message: str, path, code: str, fix: str) -> None:
    assert message.startswith(f"could not write checkpoint {path}: ") and f"({code})" in message, message
    assert "intact, nothing was lost" in message and fix in message and "\n" not in message, message


def test_a_file_size_limit_leaves_the_previous_checkpoint_and_says_so(tmp_path):
    path = _previous_checkpoint(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        err = _failed_save(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    _check_message(checkpoint_write_message(err), path, "EFBIG", "ulimit -f unlimited")
    assert path.read_bytes() == b"the previous checkpoint" and sorted(path.parent.iterdir()) == [path]


def _raise(error: OSError):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(("code", "fix"), [
    (errno.ENOSPC, "free space, or point checkpoint.dirpath"),
    (errno.EROFS, "a writable folder"),
    (errno.EACCES, "a folder you may write to"),
])  # fmt: skip
def test_full_disk_and_read_only_or_forbidden_folders_are_one_line_with_the_fix(code, fix, tmp_path):
    path = _previous_checkpoint(tmp_path)
    error = OSError(code, "simulated", str(atomic_io.partial_path(path)))
    patch = {"os": mock.MagicMock(wraps=atomic_io.os, fsync=_raise(error))} if code == errno.ENOSPC else {}
    with mock.patch("builtins.open", _raise(error)) if code != errno.ENOSPC else contextlib.nullcontext():
        err = _failed_save(path, **patch)
    _check_message(checkpoint_write_message(err), path, errno.errorcode[code], fix)
    assert path.read_bytes() == b"the previous checkpoint"


def test_a_write_failure_outside_checkpointing_keeps_its_traceback_and_the_cli_shows_one_line(tmp_path):
    assert checkpoint_write_message(OSError(errno.ENOSPC, "No space left on device", "events.out")) is None
    path = _previous_checkpoint(tmp_path)
    stream = io.StringIO()
    full = OSError(errno.ENOSPC, "No space left on device")

    def run() -> None:  # what a Trainer's save_checkpoint raising would look like to exit_readably
        with mock.patch.multiple(atomic_io, os=mock.MagicMock(wraps=atomic_io.os, fsync=_raise(full))):
            AtomicCheckpointIO().save_checkpoint(BIG, path)

    with pytest.raises(SystemExit) as exit_info:
        exit_readably(run, stream)
    assert exit_info.value.code == USER_ERROR_EXIT
    first, raised_at = stream.getvalue().splitlines()
    assert first.startswith(f"error: could not write checkpoint {path}: the disk is full (ENOSPC)")
    assert raised_at.startswith("(raised at")
