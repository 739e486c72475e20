"""End to end through ``cli.py``: the smoke fit, its logs and checkpoints, resume, and the other subcommands.

The fit runs once per module as ``python cli.py`` in a subprocess; the tests inspect its outputs.
Resume, validate, test and predict then go through ``cli.main()`` in this process, which is the
same code path minus ~10 s of imports per run. Everything runs from an empty directory, so
``--config smoke.yaml`` also checks the lookup of bare config names in ``configs/``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cli
from lightning_modules.config_files import find_config

pytestmark = pytest.mark.slow
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> dict:
    """Run the smoke fit once; return its working dir, log dir and scalar series."""
    workdir = tmp_path_factory.mktemp("smoke_cwd")
    logs = workdir / "tb"
    proc = run_cli(
        ["fit", "--config", "smoke.yaml", f"--trainer.logger.init_args.save_dir={logs}", *QUIET], cwd=workdir
    )
    version = logs / "smoke" / "version_0"
    events = EventAccumulator(str(version))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return {"proc": proc, "cwd": workdir, "logs": logs, "version": version, "scalars": scalars}


def _in_process(monkeypatch, cwd: Path, *args: str) -> cli.CoAtNetCLI:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["cli.py", *args, *QUIET])
    return cli.main()


def test_smoke_fit_learns(smoke_run):
    scalars = smoke_run["scalars"]
    losses = [v for _, v in scalars["train/loss"]]
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, f"train/loss did not fall: {losses}"
    val_acc = [v for _, v in scalars["val/acc1"]]
    assert val_acc[-1] >= 0.5, f"val/acc1 {val_acc} not far above chance (0.1)"
    assert {"val/loss", "val/acc5", "train/acc1"} <= set(scalars)


def test_smoke_fit_logs_lr_schedule_and_throughput(smoke_run):
    scalars = smoke_run["scalars"]
    lrs = [v for _, v in scalars["lr/decay"]]
    assert scalars["lr/no_decay"] == scalars["lr/decay"], "both groups follow one schedule"
    peak = max(lrs)
    assert peak == pytest.approx(2e-3, rel=0.05) and lrs[0] < peak, "warm-up must rise to the peak lr"
    assert lrs[-1] < 0.2 * peak, "cosine must decay towards min_lr_ratio * peak"
    rates = [v for _, v in scalars["train/images_per_sec"]]
    assert rates and all(r > 0 for r in rates)


def test_smoke_fit_writes_checkpoints_and_config(smoke_run):
    version = smoke_run["version"]
    checkpoints = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    best = [name for name in checkpoints if re.fullmatch(r"epoch\d{3}-acc1_\d\.\d{4}\.ckpt", name)]
    assert len(best) == 1, checkpoints
    config = (version / "config.yaml").read_text()
    assert "coatnet_nano" in config and "SyntheticDataModule" in config
    state = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["num_classes"] == 10
    assert all(k.startswith(("model.", "train_acc1", "val_acc", "test_acc")) for k in state["state_dict"])
    assert not list(smoke_run["cwd"].glob("logs")), "the save_dir override must be honoured"


def _state(checkpoint: dict, callback: str) -> dict:
    return next(state for key, state in checkpoint["callbacks"].items() if key.startswith(callback))


def test_resume_from_last_checkpoint_goes_on_in_the_same_run(smoke_run, monkeypatch):
    last = smoke_run["version"] / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    _in_process(
        monkeypatch,
        smoke_run["cwd"],
        "fit",
        "--config=smoke.yaml",
        f"--trainer.logger.init_args.save_dir={smoke_run['logs']}",
        f"--ckpt_path={last}",
        f"--trainer.max_epochs={before['epoch'] + 2}",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
    )
    assert sorted(p.name for p in (smoke_run["logs"] / "smoke").iterdir()) == ["version_0"], "no new version folder"
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == before["global_step"] + 3, "training must continue from the saved step"
    # The best checkpoint and hp/best_* cover the epochs before the resume too.
    best_before = _state(before, "ModelCheckpoint")["best_model_score"]
    assert _state(resumed, "ModelCheckpoint")["best_model_score"] >= best_before
    assert len(list(last.parent.glob("epoch*.ckpt"))) == 1, "top-1: the earlier best was replaced or kept, not doubled"
    best_acc1 = [_state(c, "TensorBoardPictures")["best"]["hp/best_acc1"] for c in (before, resumed)]
    assert best_acc1[1] >= best_acc1[0] > 0
    saved = (smoke_run["version"] / "config.yaml").read_text()
    assert "ckpt_path: null" in saved, "fit --config on the saved file repeats the run rather than resuming it"


def test_validate_test_and_predict_on_best_checkpoint(smoke_run, monkeypatch):
    checkpoints = smoke_run["version"] / "checkpoints"
    best = next(p for p in checkpoints.iterdir() if p.name.startswith("epoch"))
    best_acc = float(re.search(r"acc1_(\d\.\d{4})", best.name).group(1))
    common = [
        "--config",
        "smoke.yaml",
        f"--ckpt_path={best}",
        f"--trainer.logger.init_args.save_dir={smoke_run['logs']}",
    ]
    validated = _in_process(monkeypatch, smoke_run["cwd"], "validate", *common)
    metrics = validated.trainer.callback_metrics
    assert metrics["val/acc1"].item() == pytest.approx(best_acc, abs=1e-3), "same weights and data as in fit"
    tested = _in_process(monkeypatch, smoke_run["cwd"], "test", *common)
    metrics = tested.trainer.callback_metrics
    assert metrics["test/acc1"].item() >= 0.5 and metrics["test/acc5"] >= metrics["test/acc1"]
    predicted = _in_process(monkeypatch, smoke_run["cwd"], "predict", *common, "--trainer.limit_predict_batches=2")
    batches = predicted.trainer.predict_loop.predictions
    assert len(batches) == 2
    for out in batches:
        assert out["probs"].shape == out["classes"].shape == (64, 5)
        assert torch.all(out["probs"].sum(-1) <= 1.0 + 1e-5) and torch.all(out["probs"][:, 0] >= out["probs"][:, 1])


def test_bare_config_names_resolve_to_configs_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("smoke.yaml") == str(REPO_ROOT / "configs" / "smoke.yaml")
    assert find_config("model/post_softmax.yaml") == str(REPO_ROOT / "configs" / "model" / "post_softmax.yaml")
    assert find_config("ddp.yaml") == str(REPO_ROOT / "configs" / "trainer" / "ddp.yaml"), "bare preset names resolve"
    assert find_config("missing.yaml") == "missing.yaml"
    Path("smoke.yaml").write_text("# local file wins\nseed_everything: 7\n")
    assert find_config("smoke.yaml") == "smoke.yaml"
    # The parser takes them as such (the local smoke.yaml, then ddp.yaml from configs/), in every spelling.
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    parser = cli.CoAtNetCLI(args=["--config", str(REPO_ROOT / "configs" / "smoke.yaml"), *QUIET], run=False).parser
    config = parser.parse_args(
        [
            "--config",
            str(REPO_ROOT / "configs" / "smoke.yaml"),
            "--config",
            "smoke.yaml",
            "-c",
            "ddp.yaml",
            "--config=bf16.yaml",
        ]
    )
    assert config.seed_everything == 7 and config.trainer.strategy == "ddp" and config.trainer.precision == "bf16-mixed"
