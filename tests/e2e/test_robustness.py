"""Bad input gives a short ``error:`` message naming the problem and the fix; a diverged run keeps its last
good checkpoint.

Most CLI cases run ``cli.py``'s entry point in-process (a subprocess costs ~10 s of imports); one
subprocess checks the real exit status and stderr of a missing dataset.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch
from conftest import run_cli
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

import cli
from coatnet import create_model
from coatnet.weights import save_weights
from datamodules import DatasetError, SyntheticDataModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.resilience.atomic_io import AtomicCheckpointIO
from lightning_modules.resilience.interrupt import InterruptCheckpoint
from lightning_modules.resilience.nan_guard import NanGuard
from lightning_modules.resilience.random_state import RandomState
from lightning_modules.user_errors import (
    DIVERGED_EXIT,
    TRACEBACK_ENV,
    USER_ERROR_EXIT,
    exit_readably,
    summarize_state_dict_error,
)

QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false"]
PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "crop_pct": 0.95}
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]
MAX_LINES = 8  # an error message plus the one-line usage/origin; Lightning's own errors are 30-80 lines


def tiny_model(**overrides) -> ImageClassifier:
    return ImageClassifier(
        model_name="coatnet_nano",
        num_classes=4,
        image_size=(32, 32),
        model_overrides={"depths": (1, 1, 1, 1)},
        **overrides,
    )


def tiny_data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, image_size=32, train_size=64, val_size=16, test_size=16, batch_size=8)


def run_main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``python cli.py *argv`` in-process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["cli.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        exit_readably(cli.main)
    return exit_info.value.code, capsys.readouterr().err


def assert_short(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= MAX_LINES, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    return tmp_path


@pytest.mark.slow
def test_missing_dataset_via_subprocess_is_one_error_line(tmp_path):
    proc = run_cli(
        ["fit", "--config", "coatnet0.yaml", "--trainer.fast_dev_run=1", *CPU], cwd=tmp_path, threads=1, check=False
    )
    assert proc.returncode == USER_ERROR_EXIT, proc.stderr[-3000:]
    err = "\n".join(line for line in proc.stderr.splitlines() if line.startswith(("error:", "(raised", "  ")))
    assert err.startswith("error: image folder data/imagenet/train not found"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and TRACEBACK_ENV in proc.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--data.init_args.image_size=40"], ["error: image size 40x40", "multiple of 32", "e.g. to 32"]),
        (["--model.model_overrides={drop_path_rate: 2}"], ["drop_path_rate", "[0, 1)"]),
        (["--model.nonexistent=1"], ["error:", "--model.nonexistent"]),
        (["--model.warmup_steps=abc"], ["error:", "model.warmup_steps", "abc"]),
        (
            ["--config", "fsdp.yaml", "--trainer.accelerator=cpu"],
            ["error:", "fsdp", "GPU", "--trainer.accelerator cpu"],
        ),
        (
            ["--trainer.precision=bf16-mixed", "--model.optimizer.init_args.fused=true"],
            ["error: fused AdamW", "bf16-mixed", "fused false", "gradient_clip_val"],
        ),
    ],
    ids=["image-size", "model-config", "unknown-key", "wrong-type", "fsdp-on-cpu", "fused-amp-clipping"],
)
def test_config_errors_are_short(args, needles, in_tmp, monkeypatch, capsys):
    code, err = run_main(
        ["fit", "--config", "smoke.yaml", *QUICK, "--trainer.fast_dev_run=1", *args], monkeypatch, capsys
    )
    assert code == USER_ERROR_EXIT
    assert_short(err, *needles)


def test_traceback_env_gives_the_full_error(in_tmp, monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    monkeypatch.setattr(
        sys, "argv", ["cli.py", "fit", "--config", "coatnet0.yaml", *CPU, *QUICK, "--trainer.fast_dev_run=1"]
    )
    with pytest.raises(DatasetError, match="data/imagenet"):
        exit_readably(cli.main)


def test_bad_ckpt_path_files_are_named(in_tmp, monkeypatch, capsys):
    common = ["validate", "--config", "smoke.yaml", *QUICK, "--trainer.limit_val_batches=1"]
    code, err = run_main([*common, "--ckpt_path=nope.ckpt"], monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    assert_short(err, "nope.ckpt does not exist")

    (in_tmp / "notes.ckpt").write_text("not a checkpoint")
    code, err = run_main([*common, "--ckpt_path=notes.ckpt"], monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    assert_short(err, "notes.ckpt is not a readable PyTorch checkpoint (not a zip archive)")

    code, err = run_main([*common, f"--ckpt_path={in_tmp}"], monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    assert_short(err, "is a folder; --ckpt_path needs a .ckpt file")

    torch.save({"weight": torch.zeros(2)}, in_tmp / "weights.pt")
    code, err = run_main([*common, "--ckpt_path=weights.pt"], monkeypatch, capsys)
    assert_short(err, "weights.pt is not a Lightning training checkpoint")

    save_weights(in_tmp / "converted.pth", create_model("coatnet_nano", img_size=32), PREPROCESSING, source="test")
    code, err = run_main([*common, "--ckpt_path=converted.pth"], monkeypatch, capsys)  # has a state_dict, like a .ckpt
    assert code == USER_ERROR_EXIT
    assert_short(err, "converted.pth is not a Lightning training checkpoint", "--model.init_from")


def test_checkpoint_of_another_variant_is_summarised(in_tmp, monkeypatch, capsys):
    other = ImageClassifier(
        model_name="coatnet_nano", num_classes=7, image_size=(32, 32), model_overrides={"depths": (1, 1, 1, 1)}
    )
    torch.save({"state_dict": other.state_dict(), "pytorch-lightning_version": "2.6.0"}, in_tmp / "other.ckpt")
    code, err = run_main(
        ["validate", "--config", "smoke.yaml", *QUICK, "--trainer.limit_val_batches=1", "--ckpt_path=other.ckpt"],
        monkeypatch,
        capsys,
    )
    assert code == USER_ERROR_EXIT
    assert_short(
        err, "does not fit the model", "33 missing keys", "missing in checkpoint:", "(+30 more)", "config.yaml"
    )
    assert "shapes (checkpoint vs model): model.head" in err and "[7" in err and "[10" in err


def _checkpoint_of(path, *configs: str) -> None:
    """A checkpoint with the hyper-parameters and weights of the model these configs build."""
    args = [a for name in configs for a in ("--config", str(cli.CONFIG_DIR / name))]
    module = cli.CoAtNetCLI(args=args + QUICK, run=False).model
    state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**state, "pytorch-lightning_version": "2.6.0"}, path)


def test_checkpoint_of_another_network_with_the_same_shapes_is_refused(in_tmp, monkeypatch, capsys):
    # Pre- and post-softmax attention have identical parameters: only the saved hyper-parameters tell them apart.
    _checkpoint_of(in_tmp / "post.ckpt", "smoke.yaml", "model/post_softmax.yaml")
    validate = ["validate", "--config", "smoke.yaml", *QUICK, "--trainer.limit_val_batches=1", "--ckpt_path=post.ckpt"]
    code, err = run_main(validate, monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    difference = "transformer.attention: pre_softmax (this config) vs post_softmax (checkpoint)"
    assert_short(err, "post.ckpt holds another network", difference, "config.yaml")
    resume = ["fit", "--config", "smoke.yaml", *QUICK, "--trainer.fast_dev_run=1", "--ckpt_path=post.ckpt"]
    code, err = run_main(resume, monkeypatch, capsys)
    assert code == USER_ERROR_EXIT and "holds another network" in err, "fit must not resume it as this network either"
    (in_tmp / "config.yaml").write_text("# the user's own file\n")
    monkeypatch.setattr(sys, "argv", ["cli.py", *validate[:3], "--config", "model/post_softmax.yaml", *validate[3:]])
    assert "val/acc1" in cli.main().trainer.callback_metrics, "the matching config validates it"
    assert (in_tmp / "config.yaml").read_text() == "# the user's own file\n", (
        "no logger: the config is not saved to cwd"
    )


@contextlib.contextmanager
def lightning_messages(caplog) -> Iterator[None]:
    """Lightning's info lines into ``caplog.text`` (its logger does not propagate to the root logger caplog watches)."""
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            yield
    finally:
        lightning_log.removeHandler(caplog.handler)


def test_ckpt_path_last_without_a_checkpoint_starts_fresh_and_says_so(in_tmp, monkeypatch, caplog, capsys):
    argv = [
        "fit",
        "--config",
        "smoke.yaml",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=0",
        "--trainer.max_epochs=1",
        "--ckpt_path=last",
    ]
    monkeypatch.setattr(sys, "argv", ["cli.py", *argv])
    with lightning_messages(caplog), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = cli.main()
    assert run.trainer.global_step == 2
    assert "--ckpt_path last: no last.ckpt under logs/smoke yet, starting fresh" in caplog.text
    assert not [w for w in caught if "save_last=True" in str(w.message)], "Lightning's save_last hint does not apply"

    validate = ["validate", "--config", "smoke.yaml", "--trainer.logger.init_args.name=nothing", "--ckpt_path=last"]
    code, err = run_main(validate, monkeypatch, capsys)
    assert code == USER_ERROR_EXIT, "evaluating random weights instead would look like a result"
    assert_short(err, "--ckpt_path last: no last.ckpt under logs/nothing; pass a checkpoint file")


def test_resuming_names_the_training_settings_the_config_changes(in_tmp, monkeypatch, caplog):
    short = [
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=0",
        "--checkpoint.dirpath=ck",
        "--checkpoint.monitor=null",
    ]
    monkeypatch.setattr(
        sys, "argv", ["cli.py", "fit", "--config", "smoke.yaml", *QUICK, *short, "--trainer.max_epochs=1"]
    )
    cli.main()
    argv = [
        "fit",
        "--config",
        "smoke.yaml",
        *QUICK,
        *short,
        "--trainer.max_epochs=2",
        "--ckpt_path=ck/last.ckpt",
        "--model.warmup_steps=3",
        "--model.model_overrides.drop_path_rate=0.1",
    ]
    monkeypatch.setattr(sys, "argv", ["cli.py", *argv])
    with lightning_messages(caplog):
        run = cli.main()
    assert run.trainer.global_step == 4 and run.model.hparams.warmup_steps == 3, (
        "the config given wins over the checkpoint's"
    )
    assert "differ from the checkpoint's: warmup_steps: 10 -> 3" in caplog.text, caplog.text
    assert "drop_path_rate" not in caplog.text.split("differ from the checkpoint's")[1].splitlines()[0]


def test_state_dict_summary_counts_and_truncates():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict({"0.weight": torch.zeros(5, 2), "x1": torch.zeros(1), "x2": torch.zeros(1)})
    summary = summarize_state_dict_error(str(error.value))
    assert summary.splitlines()[0].endswith("3 missing keys, 2 unexpected keys, 1 shape mismatches")
    assert "0.weight [5, 2] vs [3, 2]" in summary
    assert summarize_state_dict_error("some other error") is None


class NaNAtStep(ImageClassifier):
    """Returns a NaN loss at one global step, as a diverging run would."""

    def __init__(self, nan_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_step = nan_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == self.nan_step else loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    seed_everything(0)
    model = NaNAtStep(
        3, model_name="coatnet_nano", num_classes=4, image_size=(32, 32), model_overrides={"depths": (1, 1, 1, 1)}
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True), NanGuard()],
    )
    with pytest.raises(SystemExit) as exit_info:
        exit_readably(lambda: trainer.fit(model, tiny_data()))
    assert exit_info.value.code == DIVERGED_EXIT
    err = capsys.readouterr().err
    assert_short(err, "error: training loss is not finite (nan or inf) at global step 3", "last.ckpt", "learning rate")
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3, "saved after the good steps 0..2, not after the NaN step"
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not any(torch.isfinite(p).all() for p in model.parameters()), "the in-memory weights are damaged"


class StepCounter(Callback):
    def __init__(self) -> None:
        self.finished = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.finished += 1


def test_nan_guard_reads_the_device_only_every_n_steps_and_before_any_save(tmp_path, capsys):
    def run(check_every: int, checkpoint: ModelCheckpoint | None) -> tuple[str, StepCounter]:
        seed_everything(0)
        model = NaNAtStep(
            3, model_name="coatnet_nano", num_classes=4, image_size=(32, 32), model_overrides={"depths": (1, 1, 1, 1)}
        )
        counter = StepCounter()
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            enable_checkpointing=checkpoint is not None,
            callbacks=[counter, NanGuard(check_every_n_steps=check_every), *([checkpoint] if checkpoint else [])],
        )
        with pytest.raises(SystemExit):
            exit_readably(lambda: trainer.fit(model, tiny_data()))
        return capsys.readouterr().err, counter

    err, counter = run(check_every=5, checkpoint=None)
    assert "at global step 3" in err and counter.finished == 5, "checked after step 4 (the 5th), naming step 3"
    # the epoch-end checkpoint would hold the damaged weights: the guard stops it, whatever its interval
    err, _ = run(check_every=1000, checkpoint=ModelCheckpoint(dirpath=tmp_path, save_last=True))
    assert "at global step 3" in err and not list(tmp_path.glob("*.ckpt"))
    with pytest.raises(ValueError, match="check_every_n_steps"):
        NanGuard(check_every_n_steps=0)


class OutOfMemoryAtFirstStep(ImageClassifier):
    def training_step(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")


def test_out_of_memory_suggests_smaller_batch_and_accumulation(capsys):
    model = OutOfMemoryAtFirstStep(
        model_name="coatnet_nano", num_classes=4, image_size=(32, 32), model_overrides={"depths": (1, 1, 1, 1)}
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    with pytest.raises(SystemExit):
        exit_readably(lambda: trainer.fit(model, tiny_data()))
    assert_short(
        capsys.readouterr().err,
        "out of GPU memory",
        "Tried to allocate 2.00 GiB",
        "--data.init_args.batch_size",
        "--trainer.accumulate_grad_batches",
    )


def test_cli_registers_the_safety_callbacks_and_atomic_io(in_tmp):
    trainer = cli.CoAtNetCLI(args=["--config", str(cli.CONFIG_DIR / "smoke.yaml"), *QUICK], run=False).trainer
    kinds = {type(c) for c in trainer.callbacks}
    assert {NanGuard, InterruptCheckpoint, RandomState} <= kinds
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


class _RaisesInWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise DatasetError(f"cannot decode image {index}.jpg\nReplace or delete it")


def test_error_raised_in_a_loader_worker_is_shown_without_the_worker_traceback(capsys):
    loader = torch.utils.data.DataLoader(_RaisesInWorker(), num_workers=1)
    with pytest.raises(SystemExit) as exit_info:
        exit_readably(lambda: next(iter(loader)))
    err = capsys.readouterr().err
    assert exit_info.value.code == USER_ERROR_EXIT
    assert_short(err, "error: cannot decode image 0.jpg\nReplace or delete it\n", "test_robustness.py:")
    assert "Caught" not in err and "Original Traceback" not in err and "in a loader worker" in err


def test_bad_datamodule_argument_is_reported_against_its_class_only(in_tmp, monkeypatch, capsys):
    argv = ["fit", "--config", "smoke.yaml", "--data=datamodules.ImageFolderDataModule"]
    code, err = run_main([*argv, "--data.init_args.batchsize=10"], monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    assert_short(err, 'Parser key "data" (datamodules.ImageFolderDataModule):', "Option 'batchsize' is not accepted")
    assert "NoneType" not in err and "Given value" not in err
    code, err = run_main([*argv, "--data.init_args.batch_size=abc"], monkeypatch, capsys)
    assert_short(err, 'Parser key "batch_size"', "Got value: abc")


def test_nan_loss_with_the_default_callbacks_exits_with_the_guard_message(in_tmp, monkeypatch, capsys):
    """The pictures of the validation run that ends the epoch came first and crashed on the NaN weights."""
    plain_step = ImageClassifier.training_step

    def nan_from_step_1(self, batch, batch_idx):
        loss = plain_step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 1 else loss

    monkeypatch.setattr(ImageClassifier, "training_step", nan_from_step_1)
    short_fit = [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
    ]
    code, err = run_main(["fit", "--config", "smoke.yaml", *short_fit], monkeypatch, capsys)
    assert code == DIVERGED_EXIT != USER_ERROR_EXIT, err
    assert_short(err, "error: training loss is not finite (nan or inf) at global step 1")


def test_training_with_empty_and_oversized_files_skips_them_under_on_corrupt_skip(tmp_path):
    """A zero-byte image crashed training with a raw cv2.error naming no file, on_corrupt: skip or not."""
    from data_helpers import random_image, write_image_folder
    from PIL import Image

    from datamodules import ImageFolderDataModule

    root = write_image_folder(tmp_path, "train", ["a", "b", "c", "d"], per_class=4, size=(32, 32), fmt="PNG")
    (root / "train" / "a" / "empty.png").write_bytes(b"")
    Image.fromarray(random_image(100, 100, 0)).save(root / "train" / "b" / "huge.png")
    data = ImageFolderDataModule(
        root=str(root), num_classes=4, val_dir="train", image_size=32, batch_size=6, num_workers=1,
        persistent_workers=False, max_image_pixels=64 * 64, preset="cifar", augment={"randaugment_layers": 0},
    )  # fmt: skip
    seed_everything(0)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(tiny_model(), data)
    assert trainer.global_step == 3 and data.num_corrupt_skipped == 2  # counted across the loader worker


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["--model.model_overrides.img_size=[64,64]"],
            [
                "error: model.model_overrides: Option 'img_size' is not accepted: "
                "the model takes it from the DataModule",
                "set --data.init_args.image_size instead",
            ],
        ),
        (
            ["--trainer.accumulate_grad_batches=0"],
            ["error: trainer.accumulate_grad_batches=0 is out of range: allowed >= 1"],
        ),
        (["--cpu_threads=-3"], ["error: cpu_threads=-3 is out of range: allowed > 0"]),
        (["--seed_everything=-5"], ["error: seed_everything=-5 is out of range: allowed 0 to 4294967295"]),
        (["--data.init_args.image_size=32000"], ["error: out of host memory", "GiB", "--data.init_args.image_size"]),
    ],
    ids=["img-size-override", "accumulate-0", "cpu-threads", "negative-seed", "huge-image-size"],
)
def test_more_settings_are_refused_in_one_line_naming_the_key(args, needles, in_tmp, monkeypatch, capsys):
    argv = ["fit", "--config", "smoke.yaml", *QUICK, "--trainer.fast_dev_run=1", *args]
    code, err = run_main(argv, monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    assert_short(err, *needles)


def test_an_argument_of_the_default_optimizer_says_to_name_the_class(in_tmp, monkeypatch, capsys):
    recipe = (cli.CONFIG_DIR / "smoke.yaml").read_text()
    start = recipe.index("  optimizer:")
    (in_tmp / "plain.yaml").write_text(recipe[:start] + recipe[recipe.index("  warmup_steps") :])
    argv = ["fit", "--config", "plain.yaml", *QUICK, "--model.optimizer.init_args.lr=0.1"]
    code, err = run_main(argv, monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    assert_short(
        err,
        "error: model.optimizer.init_args.lr: model.optimizer is the default optimizer",
        "--model.optimizer torch.optim.AdamW --model.optimizer.init_args.lr VALUE",
    )


def test_fit_lock_that_is_a_folder_is_named_with_the_fix(in_tmp, monkeypatch, capsys):
    (in_tmp / "logs" / "smoke" / "version_0" / "fit.lock").mkdir(parents=True)
    argv = ["fit", "--config", "smoke.yaml", "--trainer.max_steps=1", "--trainer.logger.init_args.version=0"]
    code, err = run_main(argv, monkeypatch, capsys)
    assert code == USER_ERROR_EXIT
    assert_short(err, "version_0/fit.lock is a folder, but the run lock is a file there: remove it (rmdir")


def test_ckpt_path_last_with_only_damaged_checkpoints_names_them_instead_of_starting_fresh(in_tmp, monkeypatch, capsys):
    folder = in_tmp / "logs" / "smoke" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    (folder / "epoch001-acc1_0.5000.ckpt").write_bytes(b"")
    code, err = run_main(
        ["fit", "--config", "smoke.yaml", *QUICK[:2], "--trainer.max_steps=1", "--ckpt_path=last"], monkeypatch, capsys
    )
    assert code == USER_ERROR_EXIT
    assert_short(
        err,
        "every checkpoint under logs/smoke is incomplete",
        "last.ckpt",
        "epoch001-acc1_0.5000.ckpt",
        "Move them away to start fresh",
    )


@pytest.mark.parametrize(
    "key",
    [
        "interrupt_checkpoint.check_every_n_steps",
        "nan_guard.check_every_n_steps",
        "throughput.window",
        "pictures.max_images",
    ],
)
def test_callback_counts_below_one_are_refused_naming_their_config_key(key, in_tmp, monkeypatch, capsys):
    """interrupt_checkpoint's 0 was accepted and divided by zero at the first DDP step; the others named no key."""
    code, err = run_main(
        ["fit", "--config", "smoke.yaml", *QUICK, "--trainer.fast_dev_run=1", f"--{key}=0"], monkeypatch, capsys
    )
    assert code == USER_ERROR_EXIT
    assert_short(err, f"error: {key}=0 is out of range: allowed > 0")
    with pytest.raises(ValueError, match="check_every_n_steps=0 is out of range: allowed > 0"):
        InterruptCheckpoint(check_every_n_steps=0)  # Python callers, who skip the parser
