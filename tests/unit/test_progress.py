"""LoggedLossProgressBar shows the loss of the last logging step, and the CLI adds it only where Lightning allows."""

from __future__ import annotations

import sys

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

import cli
from lightning_modules.callbacks.progress import LoggedLossProgressBar
from lightning_modules.classifier import ImageClassifier


class ShownVersusLogged(Callback):
    """After the bar: what it shows and the loss each step logged, per global step."""

    def __init__(self, bar: LoggedLossProgressBar) -> None:
        self.bar = bar
        self.shown: dict[int, float] = {}
        self.logged: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged[trainer.global_step] = float(outputs["loss"])
        self.shown[trainer.global_step] = self.bar.get_metrics(trainer, pl_module).get("train/loss")


def test_bar_shows_the_loss_of_the_last_logging_step(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 32, 32, generator=generator), torch.randint(10, (64,), generator=generator))
    bar = LoggedLossProgressBar()
    probe = ShownVersusLogged(bar)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=8,
        log_every_n_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[bar, probe],
    )
    module = ImageClassifier(model_name="coatnet_nano", num_classes=10, image_size=(32, 32))
    trainer.fit(module, DataLoader(data, batch_size=8))
    assert sorted(probe.shown) == list(range(1, 9))
    # The loss appears on step 3 and changes on step 6, where the loggers read it anyway.
    expected_source = {1: None, 2: None, 3: 3, 4: 3, 5: 3, 6: 6, 7: 6, 8: 6}
    for step, source in expected_source.items():
        if source is None:
            assert probe.shown[step] is None, (step, probe.shown)
        else:
            assert abs(probe.shown[step] - probe.logged[source]) < 1e-6, (step, probe.shown, probe.logged)
    assert len(set(probe.logged.values())) == 8  # the loss really moved between steps


def test_cli_leaves_its_bar_out_when_the_bar_is_off_or_another_is_configured(tmp_path, monkeypatch, capsys):
    common = [
        "fit",
        "--config",
        "smoke.yaml",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_model_summary=false",
    ]
    monkeypatch.chdir(tmp_path)

    def output(*extra: str) -> str:  # in-process: three subprocesses cost 20 s of imports
        monkeypatch.setattr(sys, "argv", ["cli.py", *common, *extra])
        cli.main()
        captured = capsys.readouterr()
        return captured.out + captured.err

    assert "Epoch 0" not in output("--trainer.enable_progress_bar=false")
    own = output("--trainer.callbacks+=TQDMProgressBar", "--trainer.callbacks.refresh_rate=1")
    assert "Epoch 0" in own and "train/loss=" not in own  # Lightning's bar; the loss is no bar metric any more
    assert "train/loss=" in output()
